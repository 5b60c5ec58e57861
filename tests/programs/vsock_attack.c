/*
 * vsock_attack: what a program inside a hull container can do with vsock. Run inside the container (as root);
 * it makes every attempt as root, then again as each uid given with -u (setresuid in a child). Each target
 * is CID:PORT. One line per attempt, which the end-to-end test asserts:
 *
 *   uid=<u> cid=<c> port=<p> socket=<OK|ERRNO> connect=<OK|ERRNO|->[ answer=<...>]
 *   uid=<u> seccomp=<mode>                 (the Seccomp: field of /proc/self/status)
 *   uid=<u> io_uring=<OK|ERRNO>
 *   uid=<u> io_uring_socket=<OK|ERRNO>     (when io_uring_setup succeeded: IORING_OP_SOCKET of AF_VSOCK)
 *
 * ERRNO is the errno's name (EAFNOSUPPORT, ETIMEDOUT, ...). When a connection succeeds (a kernel with vsock
 * loopback), the program goes on as an attacker would: on port 1025 it sends the stdio handshake for the
 * container "run" and reports the agent's answer line (answer=OK would be a hole; answer=closed is the
 * agent's peer check dropping it); on any other port it makes a ttrpc Version call and reports the reply's
 * status (answer=rpc-OK would be a hole; answer=rpc-7 is PERMISSION_DENIED). The test calls connect=OK alone
 * a failure already.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

static const char *err_name(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

/* Reads exactly n bytes (with a 5 s receive timeout set by the caller); 0 on success. */
static int read_full(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The stdio handshake; the agent's answer line, "closed" on end of stream. */
static void stdio_attempt(int fd, char *answer, size_t cap) {
    static const char hello[] = "STDIO run - stdout\n";
    if (write(fd, hello, sizeof hello - 1) < 0) {
        snprintf(answer, cap, "write-%s", err_name(errno));
        return;
    }
    char line[64];
    ssize_t r = read(fd, line, sizeof line - 1);
    if (r <= 0) {
        snprintf(answer, cap, "%s", r == 0 ? "closed" : err_name(errno));
        return;
    }
    line[r] = 0;
    line[strcspn(line, " \n")] = 0;
    snprintf(answer, cap, "%s", line);
}

/* A ttrpc call of hull.agent.v1.Agent/Version: frame header (length, stream 1, type 1 = request) and a
 * Request {service = 1, method = 2}. The reply's Response.status.code, or rpc-OK without a status. */
static void ttrpc_attempt(int fd, char *answer, size_t cap) {
    static const char service[] = "hull.agent.v1.Agent", method[] = "Version";
    unsigned char msg[10 + 64];
    size_t n = 0;
    unsigned char *body = msg + 10;
    body[n++] = 0x0a;
    body[n++] = sizeof service - 1;
    memcpy(body + n, service, sizeof service - 1);
    n += sizeof service - 1;
    body[n++] = 0x12;
    body[n++] = sizeof method - 1;
    memcpy(body + n, method, sizeof method - 1);
    n += sizeof method - 1;
    msg[0] = 0, msg[1] = 0, msg[2] = 0, msg[3] = (unsigned char)n;
    msg[4] = 0, msg[5] = 0, msg[6] = 0, msg[7] = 1;
    msg[8] = 1, msg[9] = 0;
    if (write(fd, msg, 10 + n) < 0) {
        snprintf(answer, cap, "write-%s", err_name(errno));
        return;
    }
    unsigned char hdr[10], reply[4096];
    if (read_full(fd, hdr, 10) != 0) {
        snprintf(answer, cap, "closed");
        return;
    }
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (len > sizeof reply || read_full(fd, reply, len) != 0) {
        snprintf(answer, cap, "bad-reply");
        return;
    }
    /* Response { Status status = 1 { int32 code = 1 } }: look for field 1 (0x0a) then its field 1 (0x08). */
    if (len >= 4 && reply[0] == 0x0a && reply[2] == 0x08)
        snprintf(answer, cap, "rpc-%u", reply[3]);
    else
        snprintf(answer, cap, "rpc-OK");
}

static void attempt(unsigned cid, unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        printf("uid=%u cid=%u port=%u socket=%s connect=-\n", getuid(), cid, port, err_name(errno));
        fflush(stdout);
        return;
    }
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        printf("uid=%u cid=%u port=%u socket=OK connect=%s\n", getuid(), cid, port, err_name(errno));
    } else {
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char answer[64];
        if (port == 1025)
            stdio_attempt(fd, answer, sizeof answer);
        else
            ttrpc_attempt(fd, answer, sizeof answer);
        printf("uid=%u cid=%u port=%u socket=OK connect=OK answer=%s\n", getuid(), cid, port, answer);
    }
    fflush(stdout);
    close(fd);
}

/* io_uring's IORING_OP_SOCKET makes a socket without the socket system call: set up a ring by hand (no
 * liburing in the image), submit one AF_VSOCK socket request and report its completion. */
static const char *uring_socket(int ring, struct io_uring_params *p) {
    size_t sq_len = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    size_t cq_len = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    unsigned char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED, ring, IORING_OFF_SQ_RING);
    unsigned char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p->sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                                     MAP_SHARED, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return "mmap-failed";
    memset(&sqes[0], 0, sizeof sqes[0]);
    sqes[0].opcode = IORING_OP_SOCKET;
    sqes[0].fd = AF_VSOCK;
    sqes[0].off = SOCK_STREAM;
    sqes[0].len = 0;
    unsigned *tail = (unsigned *)(sq + p->sq_off.tail);
    unsigned *array = (unsigned *)(sq + p->sq_off.array);
    array[*tail & *(unsigned *)(sq + p->sq_off.ring_mask)] = 0;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    if (syscall(SYS_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return err_name(errno);
    unsigned head = __atomic_load_n((unsigned *)(cq + p->cq_off.head), __ATOMIC_ACQUIRE);
    if (head == __atomic_load_n((unsigned *)(cq + p->cq_off.tail), __ATOMIC_ACQUIRE))
        return "no-completion";
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p->cq_off.cqes);
    int res = cqes[head & *(unsigned *)(cq + p->cq_off.ring_mask)].res;
    if (res >= 0) {
        close(res);
        return "OK";
    }
    return err_name(-res);
}

/* The Seccomp: mode of /proc/self/status (0: none, 2: filters). */
static void seccomp_mode(void) {
    char line[256], mode[16] = "?";
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp: %15s", mode) == 1)
            break;
    if (f)
        fclose(f);
    printf("uid=%u seccomp=%s\n", getuid(), mode);
}

static void io_uring(void) {
    seccomp_mode();
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    long fd = syscall(SYS_io_uring_setup, 1, &params);
    printf("uid=%u io_uring=%s\n", getuid(), fd >= 0 ? "OK" : err_name(errno));
    if (fd >= 0) {
        printf("uid=%u io_uring_socket=%s\n", getuid(), uring_socket((int)fd, &params));
        close((int)fd);
    }
    fflush(stdout);
}

static void all(int argc, char **argv, int first) {
    for (int i = first; i < argc; i++) {
        unsigned cid, port;
        if (sscanf(argv[i], "%u:%u", &cid, &port) != 2) {
            fprintf(stderr, "vsock_attack: bad target %s (CID:PORT)\n", argv[i]);
            exit(2);
        }
        attempt(cid, port);
    }
    io_uring();
}

int main(int argc, char **argv) {
    int first = 1;
    unsigned uids[8];
    int n = 0;
    while (first + 1 < argc && strcmp(argv[first], "-u") == 0 && n < 8) {
        uids[n++] = (unsigned)strtoul(argv[first + 1], NULL, 10);
        first += 2;
    }
    all(argc, argv, first);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (setgroups(0, NULL) || setresgid(uids[i], uids[i], uids[i]) || setresuid(uids[i], uids[i], uids[i])) {
                perror("vsock_attack: setresuid");
                _exit(2);
            }
            all(argc, argv, first);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 2;
    }
    return 0;
}
