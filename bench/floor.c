/* floor: what this machine can do at best, measured with nothing of mpool
 * in the way, so mpool's figures can be read against it.
 *
 *   floor [--n N] [--forks N] [--only trips|fork]
 *
 * - direct: a 16-byte message ping-pongs over a socketpair between two
 *   processes (blocking read and write); one round trip per sample.
 * - relay: the same message goes client -> relay -> worker and back over two
 *   socketpairs, the path an apply takes (client -> mpoold -> worker); the
 *   relay does a blocking read and a write per hop, nothing else.
 * - relay_same_cpu, relay_split: the relay again with every process pinned
 *   to CPU 0, and with the client on CPU 0 and relay and worker on CPU 1
 *   (machines with two CPUs or more): where the scheduler puts the three
 *   processes decides much of the round trip, most of all on a virtual
 *   machine, where waking an idle vCPU is expensive.
 * - fork: fork(), the child _exit(0)s at once, the parent waitpid()s it;
 *   the rate of the whole cycle.
 *
 * Prints one JSON object: round-trip p50, p99 and mean in microseconds for
 * direct and relay, and forks per second.  Every child is waited for. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 16

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 0 at end of stream, 1 with the whole message. */
static int read_msg(int fd, char *buf)
{
	size_t got = 0;

	while (got < MSG) {
		ssize_t n = read(fd, buf + got, MSG - got);

		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		got += (size_t)n;
	}
	return 1;
}

static void write_msg(int fd, const char *buf)
{
	size_t put = 0;

	while (put < MSG) {
		ssize_t n = write(fd, buf + put, MSG - put);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		put += (size_t)n;
	}
}

/* Echoes messages on fd until it closes, then exits. */
static void echo_loop(int fd)
{
	char buf[MSG];

	while (read_msg(fd, buf))
		write_msg(fd, buf);
	_exit(0);
}

/* Forwards each message from up to down, waits for the answer on down and
 * sends it back up, until up closes. */
static void relay_loop(int up, int down)
{
	char buf[MSG];

	while (read_msg(up, buf)) {
		write_msg(down, buf);
		if (!read_msg(down, buf))
			_exit(1);
		write_msg(up, buf);
	}
	_exit(0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Times n round trips on fd; prints "name": {p50, p99, mean}. */
static void time_trips(const char *name, int fd, int n)
{
	double *lat = calloc((size_t)n, sizeof(*lat)), sum = 0;
	char buf[MSG] = "ping";

	if (!lat)
		die("calloc");
	for (int i = 0; i < n / 10; i++) {      /* warm up caches and the scheduler */
		write_msg(fd, buf);
		read_msg(fd, buf);
	}
	for (int i = 0; i < n; i++) {
		uint64_t t0 = now_ns();

		write_msg(fd, buf);
		if (!read_msg(fd, buf))
			die("peer closed");
		lat[i] = (double)(now_ns() - t0) / 1000.0;
		sum += lat[i];
	}
	qsort(lat, (size_t)n, sizeof(*lat), cmp_double);
	printf("\"%s\": {\"p50_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f, \"n\": %d}",
	       name, lat[n / 2], lat[(size_t)n * 99 / 100], sum / n, n);
	free(lat);
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		die("sched_setaffinity");
}

/* The parent's affinity before pinning, to restore it afterwards. */
static cpu_set_t all_cpus;

static pid_t spawn(void (*loop)(int, int), int a, int b, int close1, int close2, int cpu)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid == 0) {
		pin(cpu);
		if (close1 >= 0)
			close(close1);
		if (close2 >= 0)
			close(close2);
		loop(a, b);
	}
	return pid;
}

static void echo2(int fd, int unused)
{
	(void)unused;
	echo_loop(fd);
}

static void reap(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
}

static void direct(int n)
{
	int sv[2];
	pid_t w;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	w = spawn(echo2, sv[1], -1, sv[0], -1, -1);
	close(sv[1]);
	time_trips("direct", sv[0], n);
	close(sv[0]);
	reap(w);
}

/* client_cpu, far_cpu: where the client, and the relay and worker, run
 * (-1: wherever the scheduler likes). */
static void relay(const char *name, int n, int client_cpu, int far_cpu)
{
	int up[2], down[2];
	pid_t w, r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, up) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, down) < 0)
		die("socketpair");
	w = spawn(echo2, down[1], -1, down[0], up[0], far_cpu);
	close(down[1]);
	r = spawn(relay_loop, up[1], down[0], up[0], -1, far_cpu);
	close(up[1]);
	close(down[0]);
	pin(client_cpu);
	time_trips(name, up[0], n);
	if (client_cpu >= 0 && sched_setaffinity(0, sizeof(all_cpus), &all_cpus) < 0)
		die("sched_setaffinity");
	close(up[0]);
	reap(r);
	reap(w);
}

static void forks(int n)
{
	uint64_t t0;
	double dt;

	for (int i = 0; i < n / 10 + 1; i++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0)
			_exit(0);
		reap(pid);
	}
	t0 = now_ns();
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0)
			_exit(0);
		reap(pid);
	}
	dt = (double)(now_ns() - t0) / 1e9;
	printf("\"fork\": {\"per_s\": %.1f, \"n\": %d}", n / dt, n);
}

int main(int argc, char **argv)
{
	int n = 50000, nf = 3000;
	bool trips = true, fork_rate = true;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--n") == 0 && i + 1 < argc) {
			n = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--forks") == 0 && i + 1 < argc) {
			nf = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
			i++;
			trips = strcmp(argv[i], "trips") == 0;
			fork_rate = strcmp(argv[i], "fork") == 0;
		} else {
			fprintf(stderr, "usage: floor [--n ROUND_TRIPS] [--forks N] [--only trips|fork]\n");
			return 2;
		}
	}
	if (n < 10 || nf < 10) {
		fprintf(stderr, "floor: --n and --forks take at least 10\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (sched_getaffinity(0, sizeof(all_cpus), &all_cpus) < 0)
		die("sched_getaffinity");
	setvbuf(stdout, NULL, _IOFBF, 0);
	printf("{");
	if (trips) {
		direct(n);
		printf(", ");
		relay("relay", n, -1, -1);
		if (CPU_ISSET(0, &all_cpus) && CPU_ISSET(1, &all_cpus)) {
			printf(", ");
			relay("relay_same_cpu", n, 0, 0);
			printf(", ");
			relay("relay_split", n, 0, 1);
		}
	}
	if (fork_rate) {
		if (trips)
			printf(", ");
		forks(nf);
	}
	printf("}\n");
	return 0;
}
