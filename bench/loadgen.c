/*
 * loadgen: process and thread storms for bench/event_capture.py.
 *
 *   loadgen MODE WORKERS SECONDS OUTDIR [RATE]
 *   loadgen exec PARENT_PID PROGRAM [ARGS...]
 *
 * MODE is fork-exit, fork-exec or threads. The main process forks WORKERS
 * worker processes; each loops until a shared CLOCK_MONOTONIC deadline:
 *
 *   fork-exit  fork(); the child _exit(0)s; waitpid
 *   fork-exec  fork(); the child execve("/bin/true"); waitpid
 *   threads    pthread_create(); the thread records its tid and returns; join
 *
 * RATE (optional, tasks per second over all workers; 0 or absent: flat out,
 * as before) paces each worker to RATE / WORKERS on a CLOCK_MONOTONIC
 * schedule: a worker that is ahead sleeps until its next task is due; one
 * that falls behind catches up by at most 50 ms worth of tasks (so a stall
 * does not turn into a burst). bench/collector_blocking.py uses it.
 *
 * Every worker writes the pid (or tid) of each task it created to
 * OUTDIR/worker-N.pids as native int32, so the bench can attribute events
 * exactly, even though pid_max is small and pids are reused many times.
 * The main process waits for the workers and prints one JSON object on stdout:
 * mode, workers, seconds, rate, elapsed_s, created, failed, per_worker,
 * worker_pids.
 *
 * Nothing outlives the run: the deadline stops the workers, and
 * PR_SET_PDEATHSIG kills the main process if the bench dies and the workers
 * if the main process dies.
 *
 * "exec" mode is a launcher for helpers that have no deadline of their own
 * (forkstat): it arms PR_SET_PDEATHSIG, which survives execve, so the helper
 * is killed if the bench (PARENT_PID) dies without stopping it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define MAX_BACKLOG_S 0.05 /* a paced worker catches up at most this much lost time */
#define MIN_SLEEP_S 0.0005 /* a paced worker sleeps only when at least this far ahead */

enum mode { FORK_EXIT, FORK_EXEC, THREADS };

/* Shared with the main process: each worker's tally. */
struct tally {
	uint64_t created;
	uint64_t failed; /* fork/pthread_create errors, or exec children that did not exit 0 */
	int done;
};

extern char **environ;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *thread_fn(void *arg)
{
	/* The tid is what the proc connector reports; record it for attribution. */
	*(pid_t *)arg = (pid_t)syscall(SYS_gettid);
	return NULL;
}

/* Buffered so that the loop costs no extra syscall per task. */
static void record(FILE *out, pid_t pid)
{
	int32_t v = (int32_t)pid;

	(void)fwrite(&v, sizeof(v), 1, out);
}

static void sleep_until(double t)
{
	struct timespec ts;

	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* rate: this worker's tasks per second, 0 for flat out */
static void worker(enum mode mode, double deadline, double rate, struct tally *t, FILE *out)
{
	static char *const true_argv[] = { "/bin/true", NULL };
	double origin = now_s(); /* task k is due at origin + k / rate */
	uint64_t k = 0;

	while (now_s() < deadline) {
		if (rate > 0) {
			double now = now_s();
			double due = origin + (double)k / rate;

			if (due < now - MAX_BACKLOG_S) {
				origin = now - MAX_BACKLOG_S - (double)k / rate;
			} else if (due - now >= MIN_SLEEP_S) {
				sleep_until(due < deadline ? due : deadline);
				if (now_s() >= deadline)
					break;
			}
			k++;
		}
		if (mode == THREADS) {
			pthread_t th;
			pid_t tid = 0;
			int err = pthread_create(&th, NULL, thread_fn, &tid);

			if (err) {
				t->failed++;
				continue;
			}
			(void)pthread_join(th, NULL);
			record(out, tid);
			t->created++;
			continue;
		}
		pid_t pid = fork();

		if (pid < 0) {
			/* EAGAIN under pressure: count it and try again */
			t->failed++;
			continue;
		}
		if (pid == 0) {
			if (mode == FORK_EXEC)
				execve(true_argv[0], true_argv, environ);
			_exit(mode == FORK_EXEC ? 127 : 0);
		}
		record(out, pid);
		t->created++;
		int status;

		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			t->failed++;
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: loadgen fork-exit|fork-exec|threads WORKERS SECONDS OUTDIR [RATE]\n"
			"       loadgen exec PARENT_PID PROGRAM [ARGS...]\n");
	exit(2);
}

static int exec_tied(char **argv)
{
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* the parent may have died before prctl: then nobody would stop us */
	if (getppid() != (pid_t)atoi(argv[0]))
		return 1;
	execvp(argv[1], &argv[1]);
	perror(argv[1]);
	return 127;
}

int main(int argc, char **argv)
{
	enum mode mode;
	int workers;
	double seconds;
	double rate = 0; /* tasks per second over all workers; 0: flat out */
	pid_t pids[MAX_WORKERS];
	struct tally *tallies;
	pid_t main_pid = getpid();

	if (argc >= 4 && !strcmp(argv[1], "exec"))
		return exec_tied(&argv[2]);
	if (argc != 5 && argc != 6)
		usage();
	if (!strcmp(argv[1], "fork-exit"))
		mode = FORK_EXIT;
	else if (!strcmp(argv[1], "fork-exec"))
		mode = FORK_EXEC;
	else if (!strcmp(argv[1], "threads"))
		mode = THREADS;
	else
		usage();
	workers = atoi(argv[2]);
	seconds = atof(argv[3]);
	if (argc == 6)
		rate = atof(argv[5]);
	if (workers < 1 || workers > MAX_WORKERS || seconds <= 0 || rate < 0)
		usage();

	/* If the bench dies, so do we (the deadline bounds us anyway). */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);

	tallies = mmap(NULL, sizeof(*tallies) * MAX_WORKERS, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (tallies == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(tallies, 0, sizeof(*tallies) * MAX_WORKERS);

	double start = now_s();
	double deadline = start + seconds;

	for (int i = 0; i < workers; i++) {
		char path[4096];

		snprintf(path, sizeof(path), "%s/worker-%d.pids", argv[4], i);
		FILE *out = fopen(path, "wb");

		if (!out) {
			perror(path);
			for (int j = 0; j < i; j++)
				kill(pids[j], SIGKILL);
			return 1;
		}
		pid_t pid = fork();

		if (pid < 0) {
			perror("fork");
			for (int j = 0; j < i; j++)
				kill(pids[j], SIGKILL);
			return 1;
		}
		if (pid == 0) {
			(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != main_pid)
				_exit(1); /* the main process died before prctl took effect */
			static char buf[1 << 16];

			setvbuf(out, buf, _IOFBF, sizeof(buf));
			worker(mode, deadline, rate / workers, &tallies[i], out);
			if (fclose(out) != 0)
				_exit(1);
			tallies[i].done = 1;
			_exit(0);
		}
		fclose(out);
		pids[i] = pid;
	}

	int ok = 1;

	for (int i = 0; i < workers; i++) {
		int status = 0;
		pid_t got;

		while ((got = waitpid(pids[i], &status, 0)) < 0 && errno == EINTR)
			;
		if (got < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || !tallies[i].done)
			ok = 0;
	}
	double elapsed = now_s() - start;
	uint64_t created = 0, failed = 0;

	for (int i = 0; i < workers; i++) {
		created += tallies[i].created;
		failed += tallies[i].failed;
	}
	printf("{\"mode\": \"%s\", \"workers\": %d, \"seconds\": %g, \"rate\": %g, "
	       "\"elapsed_s\": %.6f, \"created\": %llu, \"failed\": %llu, \"ok\": %s, "
	       "\"main_pid\": %d, \"per_worker\": [",
	       argv[1], workers, seconds, rate, elapsed, (unsigned long long)created,
	       (unsigned long long)failed, ok ? "true" : "false", (int)main_pid);
	for (int i = 0; i < workers; i++)
		printf("%s%llu", i ? ", " : "", (unsigned long long)tallies[i].created);
	printf("], \"worker_pids\": [");
	for (int i = 0; i < workers; i++)
		printf("%s%d", i ? ", " : "", (int)pids[i]);
	printf("]}\n");
	return ok ? 0 : 1;
}
