/*
 * vsock_attack: what a program inside a hull container can do with vsock. Run inside the container (as root);
 * it makes every attempt as root, then again as each uid given with -u (setresuid in a child). Each target
 * is CID:PORT. One line per attempt, which the end-to-end test asserts:
 *
 *   uid=<u> cid=<c> port=<p> socket=<OK|ERRNO> connect=<OK|ERRNO|->
 *   uid=<u> io_uring=<OK|ERRNO>
 *
 * ERRNO is the errno's name (EAFNOSUPPORT, ETIMEDOUT, ...). A connection that succeeds also sends the stdio
 * handshake of port 1025 or a few bytes, so a listener that answered would show it; the test only needs
 * connect=OK to call it a hole.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

static const char *err_name(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
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
        static const char hello[] = "STDIO run  stdout\n";
        (void)!write(fd, hello, sizeof hello - 1);
        printf("uid=%u cid=%u port=%u socket=OK connect=OK\n", getuid(), cid, port);
    }
    fflush(stdout);
    close(fd);
}

static void io_uring(void) {
    unsigned char params[120];
    memset(params, 0, sizeof params);
    long fd = syscall(SYS_io_uring_setup, 1, params);
    printf("uid=%u io_uring=%s\n", getuid(), fd >= 0 ? "OK" : err_name(errno));
    fflush(stdout);
    if (fd >= 0)
        close((int)fd);
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
