/* Stand-in for critest's registry.k8s.io/e2e-test-images/nonewprivs:1.3: installed set-user-ID root in a local
 * image (tests/src/bin/critest_env.rs), it prints the effective UID it runs with, which is 0 when the runtime let
 * the set-user-ID bit work and the caller's UID when no_new_privs stopped it. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
