// The tiny fork-mode function for bench/pool: reads one request line, answers with its id, exits.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char line[65536];
    ssize_t used = 0, n;
    while (used < (ssize_t)sizeof line - 1 && (n = read(0, line + used, sizeof line - 1 - used)) > 0) {
        used += n;
        if (memchr(line, '\n', used)) break;
    }
    line[used] = 0;
    char *id = strstr(line, "\"id\":\"");
    if (!id) return 1;
    id += 6;
    char *end = strchr(id, '"');
    if (!end) return 1;
    *end = 0;
    printf("{\"id\":\"%s\",\"reply\":null}\n", id);
    return 0;
}
