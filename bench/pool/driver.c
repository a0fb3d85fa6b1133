// The baseline for bench/pool: drives a function's executable directly over its pipes, as the gateway would but
// with nothing in between (no HTTP, no JSON parsing, no pool).
//   driver warm N SECONDS EXE   N threads, each with its own warm worker, one request in flight per worker
//   driver fork N SECONDS EXE   N threads, each spawning EXE once per request (posix_spawn, pipes, waitpid)
// Prints "requests=R seconds=S rps=X mean_us=M".
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static const char *executable;
static double seconds;
static int fork_mode;

static const char *request_line =
    "{\"id\":\"%s\",\"function\":\"bench\",\"entity\":null,\"command\":\"ping\",\"payload\":{},"
    "\"state\":null,\"version\":0,\"readonly\":true,\"principal\":null,\"deadline_ms\":10000}\n";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static pid_t spawn(int *in, int *out) {
    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) || pipe2(from, O_CLOEXEC)) { perror("pipe2"); exit(1); }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from[1], 1);
    char *argv[] = {(char *)executable, NULL};
    pid_t pid;
    if (posix_spawn(&pid, executable, &actions, NULL, argv, environ)) { perror("posix_spawn"); exit(1); }
    posix_spawn_file_actions_destroy(&actions);
    close(to[0]);
    close(from[1]);
    *in = to[1];
    *out = from[0];
    return pid;
}

/// Reads up to a newline; the worker answers one line per request. Bytes past the newline are not expected.
static int read_line(int fd, char *buffer, size_t size) {
    size_t used = 0;
    while (used < size) {
        ssize_t n = read(fd, buffer + used, size - used);
        if (n <= 0) return -1;
        used += n;
        if (memchr(buffer + used - n, '\n', n)) return (int)used;
    }
    return -1;
}

struct result { long requests; double busy; };

static void *run(void *arg) {
    struct result *result = arg;
    char line[512], answer[65536], id[32];
    int in = -1, out = -1;
    pid_t pid = 0;
    if (!fork_mode) {
        pid = spawn(&in, &out);
        // A warm worker may announce itself first; a first request and answer also warm it up.
        snprintf(line, sizeof line, request_line, "warmup");
        if (write(in, line, strlen(line)) < 0 || read_line(out, answer, sizeof answer) < 0) exit(1);
        if (strstr(answer, "\"ready\"") && read_line(out, answer, sizeof answer) < 0) exit(1);
    }
    double end = now() + seconds;
    while (now() < end) {
        snprintf(id, sizeof id, "r%ld", result->requests);
        int length = snprintf(line, sizeof line, request_line, id);
        double started = now();
        if (fork_mode) pid = spawn(&in, &out);
        if (write(in, line, length) != length) { perror("write"); exit(1); }
        if (fork_mode) close(in);
        if (read_line(out, answer, sizeof answer) < 0) { fprintf(stderr, "no answer\n"); exit(1); }
        if (fork_mode) {
            close(out);
            int status;
            waitpid(pid, &status, 0);
        }
        result->busy += now() - started;
        result->requests++;
    }
    if (!fork_mode) {
        close(in);
        close(out);
        int status;
        waitpid(pid, &status, 0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: driver warm|fork N SECONDS EXE\n"); return 2; }
    fork_mode = strcmp(argv[1], "fork") == 0;
    int threads = atoi(argv[2]);
    seconds = atof(argv[3]);
    executable = argv[4];
    pthread_t ids[threads];
    struct result results[threads];
    memset(results, 0, sizeof results);
    double started = now();
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, run, &results[i]);
    long requests = 0;
    double busy = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        requests += results[i].requests;
        busy += results[i].busy;
    }
    double elapsed = now() - started;
    printf("requests=%ld seconds=%.2f rps=%.1f mean_us=%.1f\n", requests, elapsed, requests / elapsed,
           busy / requests * 1e6);
    return 0;
}
