/*
 * The pod sandbox's process for the node end-to-end test's containerd: it
 * holds the pod's namespaces and does nothing else. As PID 1 of the pod it
 * must handle SIGTERM/SIGINT itself (the kernel ignores signals PID 1 has
 * no handler for), and it reaps children that other containers sharing its
 * PID namespace leave behind. Built static by `cargo xtask image`.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = stop;
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) {
        return 1;
    }
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL)) {
        return 2;
    }
    for (;;) {
        pause();
    }
}
