/*
 * Load generator for bench/relay.py: blasts ChannelData from already
 * allocated, connected client sockets with sendmmsg, and counts what a
 * peer sink socket receives with recvmmsg, for a fixed time.
 *
 * A Python sender tops out far below a TURN server's rate; batching
 * system calls here keeps the generator ahead, and it reports its own
 * CPU use so a generator-bound figure is visible.
 *
 * usage: loadgen SECONDS PAYLOAD SINK_FD CLIENT [CLIENT ...]
 * where CLIENT is FD:CHANNEL (ChannelData on that channel) or FD:xHEX
 * (HEX, at most 64 bytes, put before each payload: the header of a Send
 * indication up to its DATA attribute's value; PAYLOAD a multiple of 4)
 * prints: sent=N received=N bytes=N seconds=F sender_cpu=F receiver_cpu=F
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
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

int main(int argc, char **argv) {
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
    pthread_t thread;
    pthread_create(&thread, NULL, sender, NULL);
    double last = start;
    for (;;) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof(bufs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(sink_fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n > 0) {
            received += n;
            for (int i = 0; i < n; i++)
                received_bytes += msgs[i].msg_len;
            last = now();
        } else if (!sending) {
            break; /* a receive timeout after the sender stopped: drained */
        }
    }
    pthread_join(thread, NULL);
    receiver_cpu = thread_cpu() - cpu0;
    measured = last - start;
    printf("sent=%llu received=%llu bytes=%llu seconds=%.3f sender_cpu=%.3f receiver_cpu=%.3f\n",
           sent, received, received_bytes, measured, sender_cpu, receiver_cpu);
    return 0;
}
