// Compiled with _GNU_SOURCE so the GNU and Linux declarations that shim.h wraps are visible.
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include "shim.h"

int clinux_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int clinux_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

int clinux_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int clinux_pidfd_open(pid_t pid) { return pidfd_open(pid, 0); }

int clinux_limit_data(pid_t pid, unsigned long long bytes) {
    struct rlimit limit = {.rlim_cur = bytes, .rlim_max = bytes};
    return prlimit(pid, RLIMIT_DATA, &limit, NULL);
}
