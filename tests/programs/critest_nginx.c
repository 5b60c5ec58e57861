/* Stand-in for critest's registry.k8s.io/e2e-test-images/nginx:1.14-2, built into a local image by
 * tests/src/bin/critest_env.rs. What critest's Security Context tests look at, and nothing else: the process
 * is called `nginx` (its file name, for `pidof nginx`), its command line reads like nginx's master process
 * (`nginx: master process ...`, as `/proc/1/cmdline` shows in a container PID namespace; it must be installed
 * as /usr/sbin/nginx), and it writes its PID to /var/run/nginx.pid. It then sleeps until SIGTERM or SIGINT. Static, so any root filesystem runs it. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char title[] = "nginx: master process nginx -g daemon off;";

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    (void)argc;
    if (strcmp(argv[0], title) != 0) {
        /* Re-exec ourselves by path (so the process name stays `nginx`, not `exe`) with the title as argv[0]:
         * /proc/self/cmdline then starts with it. */
        char *args[] = {(char *)title, NULL};
        execv("/usr/sbin/nginx", args);
        perror("nginx: re-exec");
        return 1;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    FILE *f = fopen("/var/run/nginx.pid", "w");
    if (f == NULL) {
        perror("nginx: /var/run/nginx.pid");
    } else {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    printf("nginx: pid %d\n", (int)getpid());
    fflush(stdout);
    for (;;) {
        pause();
    }
}
