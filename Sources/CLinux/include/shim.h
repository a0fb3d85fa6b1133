// Linux and GNU process calls that Swift's Glibc module hides: it is built without _GNU_SOURCE, so these
// declarations are invisible to Swift. Each wrapper is compiled in shim.c, where _GNU_SOURCE is defined.
#pragma once
#include <spawn.h>
#include <sys/types.h>
// Not part of Swift's Glibc module at all; included here so Swift sees them through this module.
#include <sys/epoll.h>
#include <sys/eventfd.h>

// pipe2 lets a pipe be born close-on-exec, so a child spawned by another thread never inherits it.
int clinux_pipe2(int fds[2], int flags);
// posix_spawn_file_actions_addclosefrom_np closes every descriptor the child should not inherit.
int clinux_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int lowest);
// posix_spawn_file_actions_addchdir_np sets the child's working directory without a shell.
int clinux_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);
// Who a worker runs as, and what confines it, applied in the child between fork and exec.
struct clinux_worker_identity {
    // -1 keeps the gateway's; otherwise the child drops its supplementary groups and takes this gid and uid.
    int uid;
    int gid;
    // A Landlock ruleset (clinux_landlock_ruleset) the child restricts itself to, with no_new_privs; -1 for none.
    int landlock;
};
// Starts a function worker: `path` with `argv` and `envp` (nothing searched, nothing inherited), its stdin, stdout
// and stderr from `in`, `out` and `err`, working directory `directory`, in a new session (and so a new process
// group, with no controlling terminal), with every signal
// at its default disposition and none blocked, and no other descriptor open, as `identity` says. Returns the pid
// and sets *pidfd (a descriptor that epoll reports readable when the process exits), or returns -errno, with
// nothing left to reap. Like posix_spawn(3), but with the child on a stack inside the caller's frame (no mmap and
// munmap per spawn) and the pidfd from clone(2) itself (CLONE_PIDFD): see shim.c.
int clinux_spawn_worker(const char *path, char *const argv[], char *const envp[], const char *directory, int in,
                        int out, int err, const struct clinux_worker_identity *identity, int *pidfd);
// prctl(PR_SET_DUMPABLE, 0): /proc/<pid>/environ, mem and ptrace are closed to other processes of the same uid.
int clinux_set_undumpable(void);
// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are reparented to this process, not to init.
int clinux_set_child_subreaper(void);
// The Landlock ABI version the kernel offers, or -errno (ENOSYS: not built in; EOPNOTSUPP: disabled at boot).
int clinux_landlock_abi(void);
// A Landlock ruleset for ABI `abi`: `read` paths (files and directories beneath) may be read and executed, `write`
// paths may also be written, created and removed, and nothing else on the filesystem may be touched. From ABI 6
// on, signals and abstract Unix sockets are also scoped to the worker's own domain. Paths that do not exist are
// skipped. Returns a close-on-exec descriptor, or -errno.
int clinux_landlock_ruleset(int abi, const char *const read[], int readCount, const char *const write[],
                            int writeCount);
// prlimit sets another process's limit; RLIMIT_DATA caps a worker's heap and private writable mappings without
// counting the address space that V8, the JVM and Go reserve but never touch (RLIMIT_AS would).
int clinux_limit_data(pid_t pid, unsigned long long bytes);
// The wait status macros (WIFEXITED, WEXITSTATUS, WTERMSIG), which Swift cannot see.
int clinux_wait_exited(int status);
int clinux_wait_exit_status(int status);
int clinux_wait_term_signal(int status);
// The status a shell would report: the exit status, or 128 + the signal that killed it.
int clinux_wait_shell_status(int status);
// pthread_setname_np names the calling thread for ps, top and perf (at most 15 bytes).
int clinux_name_thread(const char *name);
