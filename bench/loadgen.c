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
 */
#define _GNU_SOURCE
#include <errno.h>
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

int main(int argc, char **argv) {
    while (argc > 1 && strncmp(argv[1], "--", 2) == 0) {
        if (strcmp(argv[1], "--both") == 0)
            both = 1;
        else if (strncmp(argv[1], "--latency=", 10) == 0)
            latency_rate = atof(argv[1] + 10);
        else {
            fprintf(stderr, "unknown option %s\n", argv[1]);
            return 2;
        }
        argv++;
        argc--;
    }
    if (argc < 5) {
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
        pthread_create(&thread, NULL, sender, NULL);
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
    return 0;
}
