/* `pgrep`, `ipcs` and `pause` for the critest images (tests/src/bin/critest-env.rs): Debian's busybox-static
 * has neither of the first two, and critest runs `pgrep sleep` (execSync with timeout) and `ipcs -m` (HostIpc)
 * in its default image; the pod sandbox's process must not be called `sleep` (as the harness's pause image's is),
 * or `pgrep sleep` finds it in a pod-wide PID namespace. One static program that acts by the name it is run as;
 * only what critest uses:
 *   pgrep NAME   prints the PIDs of processes whose name (/proc/PID/comm) contains NAME, other than itself;
 *                exits 0 when it printed one, 1 otherwise
 *   ipcs [-m]    prints the System V shared memory segments of its IPC namespace (/proc/sysvipc/shm) in
 *                util-linux's layout: key, shmid, owner (UID), perms, bytes, nattch
 *   pause        sleeps until SIGTERM or SIGINT (the pod sandbox's process, as Kubernetes' pause image) */
#include <ctype.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pgrep(const char *name) {
    DIR *proc = opendir("/proc");
    if (proc == NULL) {
        perror("pgrep: /proc");
        return 2;
    }
    int found = 0;
    struct dirent *e;
    while ((e = readdir(proc)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0])) {
            continue;
        }
        int pid = atoi(e->d_name);
        if (pid == (int)getpid()) {
            continue;
        }
        char path[64], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        FILE *f = fopen(path, "r");
        if (f == NULL) {
            continue;
        }
        if (fgets(comm, sizeof comm, f) != NULL) {
            comm[strcspn(comm, "\n")] = 0;
            if (strstr(comm, name) != NULL) {
                printf("%d\n", pid);
                found = 1;
            }
        }
        fclose(f);
    }
    closedir(proc);
    return found ? 0 : 1;
}

static int ipcs(void) {
    FILE *f = fopen("/proc/sysvipc/shm", "r");
    if (f == NULL) {
        perror("ipcs: /proc/sysvipc/shm");
        return 1;
    }
    printf("\n------ Shared Memory Segments --------\n");
    printf("%-10s %-10s %-10s %-10s %-10s %-10s\n", "key", "shmid", "owner", "perms", "bytes", "nattch");
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the header */
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        long long key, size;
        int shmid, cpid, lpid, uid;
        unsigned perms, nattch;
        if (sscanf(line, "%lld %d %o %lld %d %d %u %d", &key, &shmid, &perms, &size, &cpid, &lpid, &nattch, &uid) ==
            8) {
            printf("0x%08llx %-10d %-10d %-10o %-10lld %-10u\n", key & 0xffffffffLL, shmid, uid, perms & 0777, size,
                   nattch);
        }
    }
    fclose(f);
    printf("\n");
    return 0;
}

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    const char *self = strrchr(argv[0], '/');
    self = self ? self + 1 : argv[0];
    if (strcmp(self, "pgrep") == 0) {
        if (argc != 2) {
            fprintf(stderr, "usage: pgrep NAME\n");
            return 2;
        }
        return pgrep(argv[1]);
    }
    if (strcmp(self, "ipcs") == 0) {
        return ipcs();
    }
    if (strcmp(self, "pause") == 0) {
        signal(SIGTERM, on_term);
        signal(SIGINT, on_term);
        for (;;) {
            pause();
        }
    }
    fprintf(stderr, "%s: run me as pgrep, ipcs or pause\n", self);
    return 2;
}
