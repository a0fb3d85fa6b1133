// The compiled counter for bench/run: the Python `counter` function's `increment`, in C, so that the gateway's own
// cost shows apart from Python's. It reads the state's "value" and the payload's "by" from the request line (the
// gateway writes compact JSON; this is a benchmark, not a JSON parser), and answers the new value as reply and state.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long number_after(const char *line, const char *key, long long fallback) {
    const char *at = strstr(line, key);
    return at ? strtoll(at + strlen(key), NULL, 10) : fallback;
}

int main(void) {
    static char line[1 << 20];
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    fputs("{\"ready\":true}\n", stdout);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        char *id = strstr(line, "\"id\":\"");
        if (!id) return 1;
        id += 6;
        char *end = strchr(id, '"');
        if (!end) return 1;
        long long value = number_after(line, "\"value\":", 0) + number_after(line, "\"by\":", 1);
        *end = 0;
        printf("{\"id\":\"%s\",\"reply\":{\"value\":%lld},\"state\":{\"value\":%lld}}\n", id, value, value);
        fflush(stdout);
    }
    return 0;
}
