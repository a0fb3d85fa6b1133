// Compiled with _GNU_SOURCE so the GNU and Linux declarations that shim.h wraps are visible.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
    struct clinux_worker_identity identity;
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
    // A session of its own, not only a process group: no controlling terminal, so a worker cannot read or
    // inject keystrokes into the terminal the gateway was started from (TIOCSTI), nor get its ^C. It still leads
    // its own group, so kill(-pid) reaches everything it starts that stays in it.
    if (setsid() < 0) goto fail;
    for (int target = 0; target < 3; target++) {
        // dup2 onto itself would keep close-on-exec; clear it instead, as posix_spawn does.
        int done = child->fds[target] == target ? fcntl(target, F_SETFD, 0) : dup2(child->fds[target], target);
        if (done < 0) goto fail;
    }
    if (chdir(child->directory) < 0) goto fail;
    // Confinement before the new identity: raw system calls, because glibc's setuid family would broadcast the
    // change to every thread of the process whose memory this child shares (the gateway's).
    if (child->identity.landlock >= 0) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) goto fail;
        if (syscall(SYS_landlock_restrict_self, child->identity.landlock, 0) < 0) goto fail;
    }
    if (child->identity.uid >= 0) {
        if (syscall(SYS_setgroups, 0, NULL) < 0) goto fail;
        gid_t gid = (gid_t)child->identity.gid;
        uid_t uid = (uid_t)child->identity.uid;
        if (syscall(SYS_setresgid, gid, gid, gid) < 0) goto fail;
        if (syscall(SYS_setresuid, uid, uid, uid) < 0) goto fail;
    }
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
                        int out, int err, const struct clinux_worker_identity *identity, int *pidfd) {
    // The child's stack: the caller is suspended until the child has exec'd or exited (CLONE_VFORK), so this
    // frame outlives every use of it. musl's posix_spawn does the same.
    char stack[32 * 1024] __attribute__((aligned(16)));
    struct worker_child child = {path, argv, envp, directory, {in, out, err}, *identity, 0};
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

int clinux_wait_exited(int status) { return WIFEXITED(status); }
int clinux_wait_exit_status(int status) { return WEXITSTATUS(status); }
int clinux_wait_term_signal(int status) { return WIFSIGNALED(status) ? WTERMSIG(status) : 0; }
int clinux_wait_shell_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

int clinux_name_thread(const char *name) { return pthread_setname_np(pthread_self(), name); }

int clinux_set_undumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

int clinux_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

// The kernel's Landlock structures (linux/landlock.h), spelled out: Debian 12's headers stop at ABI 3.
struct landlock_ruleset_attr_v6 {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
struct landlock_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

enum {
    LL_EXECUTE = 1ULL << 0, LL_WRITE_FILE = 1ULL << 1, LL_READ_FILE = 1ULL << 2, LL_READ_DIR = 1ULL << 3,
    LL_TRUNCATE = 1ULL << 14, LL_IOCTL_DEV = 1ULL << 15,
    LL_CREATE_RULESET_VERSION = 1, LL_RULE_PATH_BENEATH = 1,
    LL_SCOPE_ABSTRACT_UNIX_SOCKET = 1, LL_SCOPE_SIGNAL = 2,
};

int clinux_landlock_abi(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return abi < 0 ? -errno : (int)abi;
}

static int landlock_allow(int ruleset, const char *path, uint64_t access) {
    int parent = open(path, O_PATH | O_CLOEXEC);
    if (parent < 0) return errno == ENOENT ? 0 : -errno;
    struct stat info;
    // A rule on a file may grant only the rights that apply to files.
    if (fstat(parent, &info) == 0 && !S_ISDIR(info.st_mode))
        access &= LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV;
    struct landlock_path_beneath rule = {.allowed_access = access, .parent_fd = parent};
    long added = syscall(SYS_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &rule, 0);
    int error = errno;
    close(parent);
    return added < 0 ? -error : 0;
}

int clinux_landlock_ruleset(int abi, const char *const read[], int readCount, const char *const write[],
                            int writeCount) {
    // Every filesystem right the ABI knows: 13 in ABI 1, then REFER (2), TRUNCATE (3) and IOCTL_DEV (5).
    uint64_t handled = (1ULL << 13) - 1;
    if (abi >= 2) handled |= 1ULL << 13;
    if (abi >= 3) handled |= LL_TRUNCATE;
    if (abi >= 5) handled |= LL_IOCTL_DEV;
    struct landlock_ruleset_attr_v6 attr = {.handled_access_fs = handled};
    size_t size = sizeof attr.handled_access_fs;
    if (abi >= 6) {
        attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
        size = sizeof attr;
    }
    long ruleset = syscall(SYS_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0) return -errno;
    uint64_t reading = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR;
    for (int i = 0; i < readCount; i++) {
        int done = landlock_allow((int)ruleset, read[i], reading);
        if (done < 0) { close((int)ruleset); return done; }
    }
    for (int i = 0; i < writeCount; i++) {
        int done = landlock_allow((int)ruleset, write[i], handled);
        if (done < 0) { close((int)ruleset); return done; }
    }
    return (int)ruleset;
}
