/*
 * Load generator for bench/relay.py: blasts ChannelData from already
 * allocated, connected client sockets with sendmmsg, and counts what a
 * peer sink socket receives with recvmmsg, for a fixed time.
 *
 * A Python sender tops out far below a TURN server's rate; batching
 * system calls here keeps the generator ahead, and it reports its own
 * CPU use so a generator-bound figure is visible.
 *
 * usage: loadgen [--both | --latency=RATE] SECONDS PAYLOAD SINK_FD CLIENT [CLIENT ...]
 * where CLIENT is FD:CHANNEL (ChannelData on that channel) or FD:xHEX
 * (HEX, at most 64 bytes, put before each payload: the header of a Send
 * indication up to its DATA attribute's value; PAYLOAD a multiple of 4),
 * either followed by @PORT, the client's relayed port on 127.0.0.1.
 * prints: sent=N received=N bytes=N seconds=F sender_cpu=F receiver_cpu=F
 *
 * --both: the sink (the peer) also blasts PAYLOAD-byte datagrams at every
 * client's relayed port, and a thread counts what reaches the clients:
 * adds back_sent=N back_received=N.
 * --latency=RATE: instead of blasting, send RATE ChannelData per second
 * (round robin over the clients) each carrying its send time; the sink
 * echoes each back through the relay, and the round trip of each is
 * taken when it reaches its client: prints sent=N received=N p50_us=F
 * p99_us=F p999_us=F max_us=F.
 *
 * loadgen --tls=HOST:PORT:USER:PASSWORD:CLIENTS SECONDS PAYLOAD SINK_FD
 * (or --dtls=...): the generator is the client itself.  It opens CLIENTS
 * TLS connections (DTLS associations) to the server, allocates on each
 * with the long-term credentials (401, then Allocate with
 * MESSAGE-INTEGRITY), binds channel 0x4000+i to the sink's address, then
 * writes one ChannelData per record (padded over TLS, RFC 8656 12.5), as a
 * browser does, and deletes each allocation at the end.  No Python holds
 * the session, so the encryption is as cheap as OpenSSL makes it.  It
 * prints "ready" once every client is bound and starts on a line from
 * stdin; the figures are printed before the allocations are deleted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define BATCH 64
#define MAX_CLIENTS 1024

static double seconds;
static int payload;
static int sink_fd;
static int nclients;
static int fds[MAX_CLIENTS];
static int channels[MAX_CLIENTS];
static unsigned char headers[MAX_CLIENTS][64];
static int header_lens[MAX_CLIENTS];
static volatile int sending = 1;
static unsigned long long sent, received, received_bytes;
static double sender_cpu, receiver_cpu, measured;
static int both, relay_ports[MAX_CLIENTS];
static double latency_rate;
static unsigned long long back_sent, back_received;
static double *rtts;
static size_t nrtts, max_rtts;
static int secure; /* 1: TLS, 2: DTLS */
static SSL *ssls[MAX_CLIENTS];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *sender(void *arg) {
    (void)arg;
    static unsigned char frames[MAX_CLIENTS][4 + 65536];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int frame_lens[MAX_CLIENTS];
    for (int c = 0; c < nclients; c++) {
        if (header_lens[c]) {
            memcpy(frames[c], headers[c], header_lens[c]);
            memset(frames[c] + header_lens[c], 'x', payload);
            frame_lens[c] = header_lens[c] + payload;
            continue;
        }
        uint16_t ch = htons((uint16_t)channels[c]), len = htons((uint16_t)payload);
        memcpy(frames[c], &ch, 2);
        memcpy(frames[c] + 2, &len, 2);
        memset(frames[c] + 4, 'x', payload);
        frame_lens[c] = 4 + payload + ((4 - payload % 4) % 4);
    }
    double cpu0 = thread_cpu(), end = now() + seconds;
    int c = 0;
    while (now() < end) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = frames[c];
            iov[i].iov_len = frame_lens[c];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = sendmmsg(fds[c], msgs, BATCH, 0);
        if (n > 0)
            sent += n;
        c = (c + 1) % nclients;
    }
    sender_cpu = thread_cpu() - cpu0;
    sending = 0;
    return NULL;
}

/* Point msgs[i] at bufs[i] (and, given names, the sender's address). */
static void prepare(struct mmsghdr *msgs, struct iovec *iov, unsigned char (*bufs)[2048],
                    struct sockaddr_in *names) {
    memset(msgs, 0, sizeof(*msgs) * BATCH);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof(bufs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (names) {
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        }
    }
}

/* --both: the peer sends to every relayed address in turn. */
static void *reverse_sender(void *arg) {
    (void)arg;
    static unsigned char data[65536];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in names[MAX_CLIENTS];
    memset(data, 'y', sizeof(data));
    for (int c = 0; c < nclients; c++) {
        memset(&names[c], 0, sizeof(names[c]));
        names[c].sin_family = AF_INET;
        names[c].sin_port = htons((uint16_t)relay_ports[c]);
        names[c].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    int c = 0;
    while (sending) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data;
            iov[i].iov_len = payload;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &names[c];
            msgs[i].msg_hdr.msg_namelen = sizeof(names[c]);
        }
        int n = sendmmsg(sink_fd, msgs, BATCH, 0);
        if (n > 0)
            back_sent += n;
        c = (c + 1) % nclients;
    }
    return NULL;
}

/* --both and --latency: what reaches the clients. */
static void *client_receiver(void *arg) {
    (void)arg;
    int ep = epoll_create1(0);
    for (int c = 0; c < nclients; c++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[c]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[c], &ev);
    }
    static unsigned char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct epoll_event events[64];
    double quiet_since = 0;
    for (;;) {
        int ready = epoll_wait(ep, events, 64, 200);
        if (ready <= 0) {
            if (!sending && (quiet_since == 0 ? (quiet_since = now(), 0) : now() - quiet_since > 0.2))
                break;
            continue;
        }
        quiet_since = 0;
        for (int e = 0; e < ready; e++) {
            prepare(msgs, iov, bufs, NULL);
            int n = recvmmsg(events[e].data.fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0)
                continue;
            back_received += n;
            if (latency_rate <= 0)
                continue;
            double t = now();
            for (int i = 0; i < n; i++) {
                double sent_at;
                if (msgs[i].msg_len < 4 + sizeof(sent_at))
                    continue;
                memcpy(&sent_at, bufs[i] + 4, sizeof(sent_at));
                if (nrtts < max_rtts)
                    rtts[nrtts++] = (t - sent_at) * 1e6;
            }
        }
    }
    close(ep);
    return NULL;
}

/* --latency: RATE ChannelData a second, each stamped with its send time. */
static void *paced_sender(void *arg) {
    (void)arg;
    unsigned char frame[4 + 65536];
    double cpu0 = thread_cpu(), start = now(), end = start + seconds;
    unsigned long long k = 0;
    while (now() < end) {
        double due = start + k / latency_rate;
        double wait = due - now();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        int c = (int)(k % (unsigned long long)nclients);
        int length = payload < 8 ? 8 : payload;
        uint16_t ch = htons((uint16_t)channels[c]), len = htons((uint16_t)length);
        memcpy(frame, &ch, 2);
        memcpy(frame + 2, &len, 2);
        memset(frame + 4, 'z', length);
        double t = now();
        memcpy(frame + 4, &t, sizeof(t));
        if (send(fds[c], frame, 4 + length + ((4 - length % 4) % 4), 0) > 0)
            sent++;
        k++;
    }
    sender_cpu = thread_cpu() - cpu0;
    sending = 0;
    return NULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double p) {
    if (nrtts == 0)
        return 0;
    size_t i = (size_t)(p * (nrtts - 1));
    return rtts[i];
}


/* -- --tls and --dtls: a TURN client over OpenSSL ------------------------ */

#define STUN_COOKIE 0x2112A442u

struct stun {
    unsigned char m[1500];
    size_t n;
};

static void stun_start(struct stun *s, uint16_t type) {
    uint32_t cookie = htonl(STUN_COOKIE);
    uint16_t t = htons(type);
    memcpy(s->m, &t, 2);
    memset(s->m + 2, 0, 2);
    memcpy(s->m + 4, &cookie, 4);
    RAND_bytes(s->m + 8, 12);
    s->n = 20;
}

static void stun_length(struct stun *s, size_t body) {
    uint16_t l = htons((uint16_t)body);
    memcpy(s->m + 2, &l, 2);
}

static void stun_add(struct stun *s, uint16_t type, const void *value, size_t len) {
    uint16_t h[2] = {htons(type), htons((uint16_t)len)};
    if (s->n + 4 + len + 3 > sizeof(s->m))
        return;
    memcpy(s->m + s->n, h, 4);
    memcpy(s->m + s->n + 4, value, len);
    memset(s->m + s->n + 4 + len, 0, (4 - len % 4) % 4);
    s->n += 4 + len + (4 - len % 4) % 4;
    stun_length(s, s->n - 20);
}

/* MESSAGE-INTEGRITY over everything so far, keyed by the long-term key. */
static void stun_sign(struct stun *s, const unsigned char key[16]) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    stun_length(s, s->n - 20 + 24);
    HMAC(EVP_sha1(), key, 16, s->m, s->n, mac, &len);
    stun_add(s, 0x0008, mac, 20);
}

/* The first value of attribute TYPE in message M of N bytes, or NULL. */
static const unsigned char *stun_find(const unsigned char *m, size_t n, uint16_t type,
                                      size_t *len) {
    size_t off = 20;
    while (off + 4 <= n) {
        uint16_t t, l;
        memcpy(&t, m + off, 2);
        memcpy(&l, m + off + 2, 2);
        t = ntohs(t);
        l = ntohs(l);
        if (off + 4 + l > n)
            return NULL;
        if (t == type) {
            *len = l;
            return m + off + 4;
        }
        off += 4 + l + (4 - l % 4) % 4;
    }
    return NULL;
}

/* Send S on client C's session and read the answer: its class, or -1. */
static int stun_exchange(SSL *ssl, const struct stun *s, unsigned char *answer, size_t *n) {
    if (SSL_write(ssl, s->m, (int)s->n) <= 0)
        return -1;
    int got;
    if (secure == 2) {
        got = SSL_read(ssl, answer, 1500);
    } else {
        got = 0;
        size_t want = 20;
        while ((size_t)got < want) {
            int r = SSL_read(ssl, answer + got, (int)(want - got));
            if (r <= 0)
                return -1;
            got += r;
            if (got == 20) {
                uint16_t l;
                memcpy(&l, answer + 2, 2);
                want = 20 + ntohs(l);
                if (want > 1500)
                    return -1;
            }
        }
    }
    if (got < 20 || memcmp(answer + 8, s->m + 8, 12) != 0)
        return -1;
    *n = (size_t)got;
    return answer[0] & 0x01 ? (answer[1] & 0x10 ? 3 : 2) : (answer[1] & 0x10 ? 1 : 0);
}

static char realm[256], nonce[256], user[256], password[256];
static unsigned char lt_key[16];

/* A request of TYPE with the credentials (after a 401) and ATTRS. */
static int request(SSL *ssl, uint16_t type, const struct stun *attrs, int sign) {
    struct stun s;
    unsigned char answer[1500];
    size_t n, len;
    for (int attempt = 0; attempt < 2; attempt++) {
        stun_start(&s, type);
        memcpy(s.m + 20, attrs->m + 20, attrs->n - 20);
        s.n = attrs->n;
        stun_length(&s, s.n - 20);
        if (sign) {
            stun_add(&s, 0x0006, user, strlen(user));
            stun_add(&s, 0x0014, realm, strlen(realm));
            stun_add(&s, 0x0015, nonce, strlen(nonce));
            stun_sign(&s, lt_key);
        }
        int cls = stun_exchange(ssl, &s, answer, &n);
        if (cls == 2)
            return 0;
        if (cls != 3)
            return -1;
        /* 401 or 438: take the realm and nonce and sign again. */
        const unsigned char *v = stun_find(answer, n, 0x0015, &len);
        if (!v || len >= sizeof(nonce))
            return -1;
        memcpy(nonce, v, len);
        nonce[len] = 0;
        if ((v = stun_find(answer, n, 0x0014, &len)) && len < sizeof(realm)) {
            memcpy(realm, v, len);
            realm[len] = 0;
        }
        char text[800];
        snprintf(text, sizeof(text), "%s:%s:%s", user, realm, password);
        EVP_Digest(text, strlen(text), lt_key, NULL, EVP_md5(), NULL);
        sign = 1;
    }
    return -1;
}

/* Connect client C over TLS or DTLS, allocate, bind its channel to PEER. */
static int secure_client(int c, SSL_CTX *ctx, const struct sockaddr_in *server,
                         const struct sockaddr_in *peer) {
    int fd = socket(AF_INET, secure == 2 ? SOCK_DGRAM : SOCK_STREAM, 0);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)server, sizeof(*server)) < 0)
        return -1;
    SSL *ssl = SSL_new(ctx);
    if (secure == 2) {
        BIO *bio = BIO_new_dgram(fd, BIO_CLOSE);
        BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, (void *)server);
        SSL_set_bio(ssl, bio, bio);
    } else {
        SSL_set_fd(ssl, fd);
    }
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    fds[c] = fd;
    ssls[c] = ssl;
    struct stun attrs;
    unsigned char transport[4] = {17, 0, 0, 0};
    stun_start(&attrs, 0);
    stun_add(&attrs, 0x0019, transport, 4);
    if (request(ssl, 0x0003, &attrs, realm[0] != 0) < 0)
        return -1;
    unsigned char bind[8] = {0, 0x01}, number[4] = {0};
    uint16_t port = htons(ntohs(peer->sin_port) ^ (STUN_COOKIE >> 16));
    uint32_t address = peer->sin_addr.s_addr ^ htonl(STUN_COOKIE);
    memcpy(bind + 2, &port, 2);
    memcpy(bind + 4, &address, 4);
    channels[c] = 0x4000 + c;
    number[0] = (unsigned char)(channels[c] >> 8);
    number[1] = (unsigned char)channels[c];
    stun_start(&attrs, 0);
    stun_add(&attrs, 0x000C, number, 4);
    stun_add(&attrs, 0x0012, bind, 8);
    return request(ssl, 0x0009, &attrs, 1);
}

static int secure_setup(const char *spec, int sink) {
    char host[64];
    int port = 0;
    if (sscanf(spec, "%63[^:]:%d:%255[^:]:%255[^:]:%d", host, &port, user, password,
               &nclients) != 5 || nclients < 1 || nclients > MAX_CLIENTS) {
        fprintf(stderr, "bad --tls/--dtls %s\n", spec);
        return -1;
    }
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)}, peer;
    socklen_t peer_len = sizeof(peer);
    inet_pton(AF_INET, host, &server.sin_addr);
    getsockname(sink, (struct sockaddr *)&peer, &peer_len);
    SSL_CTX *ctx = SSL_CTX_new(secure == 2 ? DTLS_client_method() : TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* a benchmark on loopback */
    for (int c = 0; c < nclients; c++)
        if (secure_client(c, ctx, &server, &peer) < 0) {
            fprintf(stderr, "client %d could not allocate over %s\n", c,
                    secure == 2 ? "DTLS" : "TLS");
            return -1;
        }
    return 0;
}

/* Refresh with LIFETIME 0 on every session, then close it. */
static void secure_teardown(void) {
    struct stun attrs;
    unsigned char zero[4] = {0};
    stun_start(&attrs, 0);
    stun_add(&attrs, 0x000D, zero, 4);
    for (int c = 0; c < nclients; c++) {
        request(ssls[c], 0x0004, &attrs, 1);
        SSL_shutdown(ssls[c]);
        SSL_free(ssls[c]);
    }
}

/* One ChannelData per record, BATCH at a time per client in turn. */
static void *secure_sender(void *arg) {
    (void)arg;
    static unsigned char frame[4 + 65536];
    int length = 4 + payload + (secure == 1 ? (4 - payload % 4) % 4 : 0);
    memset(frame + 4, 'x', payload);
    double cpu0 = thread_cpu(), end = now() + seconds;
    int c = 0;
    while (now() < end) {
        uint16_t ch = htons((uint16_t)channels[c]), len = htons((uint16_t)payload);
        memcpy(frame, &ch, 2);
        memcpy(frame + 2, &len, 2);
        for (int i = 0; i < BATCH; i++)
            if (SSL_write(ssls[c], frame, length) > 0)
                sent++;
        c = (c + 1) % nclients;
    }
    sender_cpu = thread_cpu() - cpu0;
    sending = 0;
    return NULL;
}

int main(int argc, char **argv) {
    const char *secure_spec = NULL;
    while (argc > 1 && strncmp(argv[1], "--", 2) == 0) {
        if (strcmp(argv[1], "--both") == 0)
            both = 1;
        else if (strncmp(argv[1], "--latency=", 10) == 0)
            latency_rate = atof(argv[1] + 10);
        else if (strncmp(argv[1], "--tls=", 6) == 0)
            secure = 1, secure_spec = argv[1] + 6;
        else if (strncmp(argv[1], "--dtls=", 7) == 0)
            secure = 2, secure_spec = argv[1] + 7;
        else {
            fprintf(stderr, "unknown option %s\n", argv[1]);
            return 2;
        }
        argv++;
        argc--;
    }
    if (argc < (secure ? 4 : 5)) {
        fprintf(stderr, "usage: loadgen SECONDS PAYLOAD SINK_FD FD:CHANNEL...\n");
        return 2;
    }
    seconds = atof(argv[1]);
    payload = atoi(argv[2]);
    sink_fd = atoi(argv[3]);
    if (payload < 0 || payload > 65535 - 64) {
        fprintf(stderr, "bad payload %d\n", payload);
        return 2;
    }
    for (int i = 4; i < argc && nclients < MAX_CLIENTS; i++) {
        char hex[129];
        const char *at = strchr(argv[i], '@');
        relay_ports[nclients] = at ? atoi(at + 1) : 0;
        if (sscanf(argv[i], "%d:x%128[0-9a-f]", &fds[nclients], hex) == 2) {
            size_t n = strlen(hex);
            if (n % 2 || n == 0 || n / 2 > sizeof(headers[0])) {
                fprintf(stderr, "bad header %s\n", argv[i]);
                return 2;
            }
            for (size_t k = 0; k < n / 2; k++)
                sscanf(hex + 2 * k, "%2hhx", &headers[nclients][k]);
            header_lens[nclients] = (int)(n / 2);
        } else if (sscanf(argv[i], "%d:%d", &fds[nclients], &channels[nclients]) != 2) {
            fprintf(stderr, "bad client %s\n", argv[i]);
            return 2;
        }
        nclients++;
    }
    /* Python hands over sockets with a timeout, which it implements with
     * O_NONBLOCK: a stream socket would then take part of a frame when
     * its buffer fills, and every frame after it would be garbage. */
    for (int c = 0; c < nclients; c++)
        fcntl(fds[c], F_SETFL, fcntl(fds[c], F_GETFL) & ~O_NONBLOCK);
    if (secure) {
        /* Say when the sessions are up, and start when told: the caller
         * counts the server's CPU from here, without the handshakes. */
        if (secure_setup(secure_spec, sink_fd) < 0)
            return 1;
        printf("ready\n");
        fflush(stdout);
        if (getchar() == EOF)
            return 1;
    }
    struct timeval tv = {0, 200000};
    setsockopt(sink_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    static unsigned char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    double cpu0 = thread_cpu(), start = now();
    pthread_t thread, back_thread, client_thread;
    if (latency_rate > 0) {
        max_rtts = (size_t)(latency_rate * seconds) + 1024;
        rtts = calloc(max_rtts, sizeof(double));
        pthread_create(&thread, NULL, paced_sender, NULL);
    } else {
        pthread_create(&thread, NULL, secure ? secure_sender : sender, NULL);
    }
    if (both)
        pthread_create(&back_thread, NULL, reverse_sender, NULL);
    if (both || latency_rate > 0)
        pthread_create(&client_thread, NULL, client_receiver, NULL);
    double last = start;
    struct sockaddr_in sources[BATCH];
    for (;;) {
        prepare(msgs, iov, bufs, sources);
        int n = recvmmsg(sink_fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n > 0) {
            received += n;
            for (int i = 0; i < n; i++)
                received_bytes += msgs[i].msg_len;
            last = now();
            if (latency_rate > 0) {
                /* Echo each back through the relay it came from. */
                for (int i = 0; i < n; i++)
                    msgs[i].msg_hdr.msg_iov[0].iov_len = msgs[i].msg_len;
                sendmmsg(sink_fd, msgs, n, 0);
            }
        } else if (!sending) {
            break; /* a receive timeout after the sender stopped: drained */
        }
    }
    pthread_join(thread, NULL);
    if (both)
        pthread_join(back_thread, NULL);
    if (both || latency_rate > 0)
        pthread_join(client_thread, NULL);
    receiver_cpu = thread_cpu() - cpu0;
    measured = last - start;
    if (latency_rate > 0) {
        qsort(rtts, nrtts, sizeof(double), by_value);
        printf("sent=%llu received=%llu returned=%zu p50_us=%.1f p99_us=%.1f p999_us=%.1f "
               "max_us=%.1f sender_cpu=%.3f\n",
               sent, received, nrtts, percentile(0.5), percentile(0.99), percentile(0.999),
               nrtts ? rtts[nrtts - 1] : 0.0, sender_cpu);
        return 0;
    }
    printf("sent=%llu received=%llu bytes=%llu seconds=%.3f sender_cpu=%.3f receiver_cpu=%.3f",
           sent, received, received_bytes, measured, sender_cpu, receiver_cpu);
    if (both)
        printf(" back_sent=%llu back_received=%llu", back_sent, back_received);
    printf("\n");
    fflush(stdout);
    if (secure)
        secure_teardown();
    return 0;
}
