// Compiled with _GNU_SOURCE so the GNU and Linux declarations that shim.h wraps are visible.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "shim.h"

int clinux_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int clinux_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

int clinux_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

// The kernel's struct sigaction on x86_64 and aarch64 (glibc's differs, and glibc refuses its own internal signals).
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

struct worker_child {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *directory;
    int fds[3];
    volatile int error;  // set by the child when it cannot exec; the parent reads it once the child is gone
};

// Runs in the child, which shares the caller's memory (CLONE_VM) while the caller waits (CLONE_VFORK), on a stack
// inside the caller's frame, until execve replaces it. Only system calls here: no allocation, no locks. Every
// signal is blocked on entry (the caller blocked them all), so no handler of the gateway can run in it.
static int worker_child_main(void *raw) {
    struct worker_child *child = raw;
    // Handlers do not survive exec, but dispositions set to SIG_IGN (SIGPIPE, say) would: every signal goes back to
    // its default, as posix_spawn's POSIX_SPAWN_SETSIGDEF with a full set does. glibc's two internal signals (32 and
    // 33) are ignored instead, as glibc's posix_spawn leaves them.
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct kernel_sigaction action = {.handler = (sig == 32 || sig == 33) ? SIG_IGN : SIG_DFL};
        syscall(SYS_rt_sigaction, sig, &action, NULL, sizeof action.mask);
    }
    if (setpgid(0, 0) < 0) goto fail;
    for (int target = 0; target < 3; target++) {
        // dup2 onto itself would keep close-on-exec; clear it instead, as posix_spawn does.
        int done = child->fds[target] == target ? fcntl(target, F_SETFD, 0) : dup2(child->fds[target], target);
        if (done < 0) goto fail;
    }
    if (chdir(child->directory) < 0) goto fail;
    if (syscall(SYS_close_range, 3, ~0U, 0) < 0) {
        // Before Linux 5.9: close them one by one.
        struct rlimit files;
        if (errno != ENOSYS || getrlimit(RLIMIT_NOFILE, &files) < 0) goto fail;
        for (rlim_t fd = 3; fd < files.rlim_cur; fd++) close((int)fd);
    }
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none);
    execve(child->path, child->argv, child->envp);
fail:
    child->error = errno ? errno : EINVAL;
    _exit(127);
}

int clinux_spawn_worker(const char *path, char *const argv[], char *const envp[], const char *directory, int in,
                        int out, int err, int *pidfd) {
    // The child's stack: the caller is suspended until the child has exec'd or exited (CLONE_VFORK), so this
    // frame outlives every use of it. musl's posix_spawn does the same.
    char stack[32 * 1024] __attribute__((aligned(16)));
    struct worker_child child = {path, argv, envp, directory, {in, out, err}, 0};
    // Block everything, glibc's internal signals too (pthread_sigmask would leave those open), for the child to
    // start with: it must not run a handler of ours while it shares our memory. All but SIGCHLD: the child has no
    // children to send it one, and a caller that leaves it open (WorkerPool's spawn threads) has the kernel drop
    // it, at its other children's exits, rather than wake another thread to discard it.
    unsigned long all = ~0UL & ~(1UL << (SIGCHLD - 1)), saved = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, sizeof all);
    *pidfd = -1;
    pid_t pid = clone(worker_child_main, stack + sizeof stack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &child,
                      pidfd);
    int cloneError = errno;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, sizeof saved);
    if (pid < 0) return -cloneError;
    if (child.error != 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        close(*pidfd);
        *pidfd = -1;
        return -child.error;
    }
    return pid;
}

int clinux_limit_data(pid_t pid, unsigned long long bytes) {
    struct rlimit limit = {.rlim_cur = bytes, .rlim_max = bytes};
    return prlimit(pid, RLIMIT_DATA, &limit, NULL);
}

int clinux_name_thread(const char *name) { return pthread_setname_np(pthread_self(), name); }
