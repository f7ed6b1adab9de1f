/* A named group of sleeping processes for bench/scrape.py.
 *
 *   ptxsleepers NAME N
 *
 * Renames itself to NAME (its comm, what `select: comm` roots and
 * process-exporter's {{.Comm}} see), forks N children that inherit that name
 * and sleep, prints "ready N" (or "forkfail ERRNO") on stdout, then waits for
 * EOF on stdin or SIGTERM, kills and reaps its children and exits.
 *
 * C rather than Python or sh so that 20,000 sleepers cost only kernel memory.
 * Each child dies with its parent (PR_SET_PDEATHSIG), so nothing outlives the
 * group even if the parent is SIGKILLed. Output goes through write(2)
 * (dprintf), never stdio buffers, which fork would duplicate.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static void on_term(int s) { (void)s; stop_flag = 1; }

int main(int argc, char **argv) {
    if (argc != 3) { dprintf(2, "usage: %s NAME N\n", argv[0]); return 2; }
    prctl(PR_SET_NAME, argv[1]);
    int n = atoi(argv[2]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;  /* no SA_RESTART: read returns EINTR on SIGTERM */
    sigaction(SIGTERM, &sa, NULL);
    pid_t self = getpid();
    pid_t *kids = calloc(n > 0 ? n : 1, sizeof(pid_t));
    int made = 0;
    for (; made < n; made++) {
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGTERM, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != self) _exit(0);  /* parent died before prctl */
            for (;;) pause();
        }
        if (pid < 0) { dprintf(1, "forkfail %d\n", errno); break; }
        kids[made] = pid;
    }
    if (made == n) dprintf(1, "ready %d\n", made);
    char c;
    while (!stop_flag) {
        ssize_t got = read(0, &c, 1);  /* EOF: the bench is gone or done */
        if (got == 0) break;
        if (got < 0 && errno != EINTR) break;
    }
    for (int i = 0; i < made; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < made; i++)
        while (waitpid(kids[i], NULL, 0) < 0 && errno == EINTR) {}
    return 0;
}
