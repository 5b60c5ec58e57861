/*
 * vsock-tool: guest-side helper of hull's vhost-user vsock tests (built with gcc -static into the test
 * initramfs; busybox has no vsock client).
 *
 *   vsock-tool cid                      print the guest's CID
 *   vsock-tool serve PORT               accept forever; each connection (own process) reads a line:
 *                                         "ECHO\n"        echo every byte until EOF
 *                                         "XFER N SEED\n" send N bytes of pattern(SEED) while reading N
 *                                                         bytes that must equal pattern(SEED+1), then
 *                                                         write "RESULT OK\n" or "RESULT BAD <offset>\n"
 *   vsock-tool echo-client PORT MSG     connect to the host (CID 2), send MSG, half-close, print the reply
 *
 * pattern(seed) byte i: see pattern_byte(); the host test computes the same.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static uint8_t pattern_byte(uint64_t i, uint32_t seed) {
    uint32_t h = (uint32_t)i * 2654435761u;
    h ^= h >> 15;
    h ^= (uint32_t)(i >> 32);
    return (uint8_t)(h ^ seed);
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int read_line(int fd, char *buf, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) return -1;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

static int write_all(int fd, const void *p, size_t len) {
    const char *c = p;
    while (len) {
        ssize_t w = write(fd, c, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        len -= (size_t)w;
    }
    return 0;
}

static void serve_echo(int fd) {
    static char buf[65536];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (write_all(fd, buf, (size_t)r) < 0) break;
    }
}

static void serve_xfer(int fd, uint64_t n, uint32_t seed) {
    static uint8_t out[65536], in[65536];
    uint64_t sent = 0, got = 0, bad = UINT64_MAX;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (sent < n || got < n) {
        struct pollfd p = {.fd = fd, .events = 0};
        if (got < n) p.events |= POLLIN;
        if (sent < n) p.events |= POLLOUT;
        if (poll(&p, 1, 60000) <= 0) die("poll");
        if ((p.revents & POLLOUT) && sent < n) {
            size_t len = n - sent < sizeof out ? (size_t)(n - sent) : sizeof out;
            for (size_t i = 0; i < len; i++) out[i] = pattern_byte(sent + i, seed);
            ssize_t w = write(fd, out, len);
            if (w > 0) sent += (uint64_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) die("write");
        }
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && got < n) {
            size_t want = n - got < sizeof in ? (size_t)(n - got) : sizeof in;
            ssize_t r = read(fd, in, want);
            if (r == 0) break;
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                die("read");
            }
            for (ssize_t i = 0; i < r; i++)
                if (bad == UINT64_MAX && in[i] != pattern_byte(got + (uint64_t)i, seed + 1)) bad = got + (uint64_t)i;
            got += (uint64_t)r;
        }
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    char line[64];
    if (got != n) snprintf(line, sizeof line, "RESULT SHORT %llu\n", (unsigned long long)got);
    else if (bad != UINT64_MAX) snprintf(line, sizeof line, "RESULT BAD %llu\n", (unsigned long long)bad);
    else snprintf(line, sizeof line, "RESULT OK\n");
    write_all(fd, line, strlen(line));
}

static void serve(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(s, 256) < 0) die("listen");
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR) continue;
            die("accept");
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(s);
            char line[128];
            unsigned long long n;
            unsigned seed;
            if (read_line(c, line, sizeof line) < 0) _exit(1);
            if (strcmp(line, "ECHO") == 0) serve_echo(c);
            else if (sscanf(line, "XFER %llu %u", &n, &seed) == 2) serve_xfer(c, n, seed);
            close(c);
            _exit(0);
        }
        close(c);
    }
}

static void echo_client(unsigned port, const char *msg) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    if (write_all(s, msg, strlen(msg)) < 0) die("write");
    shutdown(s, SHUT_WR);
    char buf[4096];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(s, buf + n, sizeof buf - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    printf("%s\n", buf);
    close(s);
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "cid") == 0) {
        unsigned cid = 0;
        int fd = open("/dev/vsock", O_RDONLY);
        if (fd < 0 || ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0) die("get cid");
        printf("%u\n", cid);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "serve") == 0) {
        serve((unsigned)atoi(argv[2]));
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "echo-client") == 0) {
        echo_client((unsigned)atoi(argv[2]), argv[3]);
        return 0;
    }
    fprintf(stderr, "usage: vsock-tool cid | serve PORT | echo-client PORT MSG\n");
    return 2;
}
