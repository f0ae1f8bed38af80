/* Embedding bora from C: load a model, stream an answer, then the whole answer again and the
 * errors a caller sees. tests/examples.sh builds and runs it against libbora on the fixtures.
 *
 *   cc -I crates/bora-c/include examples/c/chat.c -L target/release -lbora -o chat
 *   LD_LIBRARY_PATH=target/release ./chat MODEL
 *
 * MODEL is anything `bora --model` takes (a directory, a GGUF file, bora-demo, ...). Exits 0
 * when every check holds. */

#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c99 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bora.h"

static int failures = 0;

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "FAILED: %s (last error: %s)\n", what,
                bora_last_error() ? bora_last_error() : "none");
        failures++;
    }
}

/* Seconds on a monotonic clock. */
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The number after "key": in a JSON text, or -1. */
static long json_number(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    return p ? strtol(p + strlen(pattern), NULL, 10) : -1;
}

/* The value of "content" in a JSON text, unescaped well enough for the fixtures' text. */
static void append_content(const char *json, char *out, size_t cap) {
    const char *p = strstr(json, "\"content\":\"");
    if (!p) return;
    p += strlen("\"content\":\"");
    size_t n = strlen(out);
    for (; *p && *p != '"' && n + 1 < cap; p++) {
        if (*p == '\\' && p[1]) p++;
        out[n++] = *p;
    }
    out[n] = '\0';
}

int main(int argc, char **argv) {
    const char *model = argc > 1 ? argv[1] : "bora-demo";
    char options[4096];
    snprintf(options, sizeof options, "{\"model\": \"%s\", \"kv_cache_mib\": 64}", model);
    BoraEngine *engine = bora_engine_load(options);
    check(engine != NULL, "the model loads");
    if (!engine) return 1;
    char *name = bora_engine_name(engine);
    printf("bora %s: %s as `%s`\n", bora_version(), model, name);

    const char *request =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me about experts.\"}],"
        " \"max_tokens\": 16, \"temperature\": 0}";

    /* Streamed: chunks as they come. */
    BoraStream *stream = bora_chat_stream(engine, request);
    check(stream != NULL, "the stream starts");
    static char streamed[65536];
    streamed[0] = '\0';
    int chunks = 0, done = 0;
    /* Every wait is bounded: the whole stream within 120 s, whatever the library answers. */
    double deadline = now() + 120;
    while (stream && !done) {
        char *chunk = NULL;
        switch (bora_stream_next(stream, 100, &chunk)) {
            case BORA_CHUNK:
                chunks++;
                append_content(chunk, streamed, sizeof streamed);
                if (strstr(chunk, "\"usage\"")) check(strstr(chunk, "\"finish_reason\":\"length\"") != NULL, "the last chunk ends with length");
                bora_string_free(chunk);
                break;
            case BORA_WAITING:
                if (now() > deadline) {
                    check(0, "the stream ends within 120 s");
                    done = 1;
                }
                break;
            case BORA_END: done = 1; break;
            default: check(0, "bora_stream_next"); done = 1;
        }
    }
    bora_stream_free(stream);
    printf("streamed (%d chunks): %s\n", chunks, streamed);
    check(chunks >= 3, "role, text and finish chunks");

    /* Whole: the same text at temperature 0. */
    char *whole = bora_chat(engine, request);
    check(whole != NULL, "the whole answer");
    if (whole) {
        static char text[65536];
        text[0] = '\0';
        append_content(strstr(whole, "\"message\""), text, sizeof text);
        check(strcmp(text, streamed) == 0, "whole and streamed text agree");
        /* tests/examples.sh compares this line with what `bora serve` answers. */
        printf("answer: %s\n", text);
        check(strstr(whole, "\"completion_tokens\":16") != NULL, "16 tokens");
        bora_string_free(whole);
    }

    /* Tokens of the prompt. */
    char *ids = bora_tokenize(engine, request);
    check(ids != NULL && ids[0] == '[', "tokenize gives a JSON array");
    bora_string_free(ids);

    /* Errors: NULL, and the API's error body. */
    char *bad = bora_chat(engine, "{\"messages\": [], \"temperature\": \"hot\"}");
    check(bad == NULL, "a bad request fails");
    const char *err = bora_last_error();
    check(err != NULL && strstr(err, "\"param\":\"temperature\"") != NULL, "the error names the field");
    printf("error: %s\n", err ? err : "none");
    check(bora_chat(engine, "not json") == NULL, "not JSON fails");
    check(bora_chat_stream(engine, NULL) == NULL, "NULL fails");
    check(bora_engine_load("{\"model\": \"/no/such/model\"}") == NULL, "a missing model fails");
    err = bora_last_error();
    check(err != NULL && strstr(err, "load_error") != NULL, "load_error");

    /* A cancelled stream ends, and frees its KV blocks (the engine's stats say so). */
    stream = bora_chat_stream(engine, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 40, \"min_tokens\": 40}");
    check(stream != NULL, "the stream to cancel starts");
    char *chunk = NULL;
    /* Its role chunk and a first token: by then the engine runs it. */
    int got = 0, status = BORA_WAITING;
    deadline = now() + 120;
    while (stream && got < 2 && now() < deadline) {
        status = bora_stream_next(stream, 100, &chunk);
        if (status == BORA_CHUNK) {
            got++;
            bora_string_free(chunk);
        } else if (status != BORA_WAITING) {
            break;
        }
    }
    check(got == 2, "the stream to cancel sends its first chunks");
    char *stats = NULL;
    long used = -1;
    deadline = now() + 30;
    do {
        stats = bora_engine_stats(engine);
        used = json_number(stats, "blocks_used");
        bora_string_free(stats);
    } while (used <= 0 && now() < deadline);
    check(used > 0, "a running stream holds KV blocks");
    bora_stream_cancel(stream);
    check(bora_stream_next(stream, 100, &chunk) == BORA_END, "a cancelled stream ends");
    bora_stream_free(stream);
    deadline = now() + 30;
    do {
        stats = bora_engine_stats(engine);
        used = json_number(stats, "blocks_used");
        bora_string_free(stats);
    } while (used != 0 && now() < deadline);
    check(used == 0, "the cancelled stream's KV blocks are freed");

    bora_string_free(name);
    bora_engine_free(engine);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
