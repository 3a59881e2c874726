/* Soak test of the C ABI (scripts/soak.sh builds and runs it; not part of the test suite):
 * N multi-turn conversations with images on T threads sharing one ivl_model, one session per
 * conversation. Records RSS (/proc/self/statm) after loading, after a warm-up and at the end, counts
 * errors, and checks that identical inputs gave identical answers (a hash of the three answers per
 * input kind: image1, image2, a raw RGB frame).
 *
 *   soak MODEL.gguf IMAGE1 IMAGE2 [CONVERSATIONS=1000] [THREADS=4] [WARMUP=50] [MAX_TILES=2]
 *
 * Exits 0 when: RSS at the end is within 5% of RSS after the warm-up, no call failed, and every input
 * kind got one answer hash. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internvl.h"

#define KINDS 3
#define TURNS 3

static const char *KIND_NAMES[KINDS] = {"image1", "image2", "rgb-frame"};
static const char *QUESTIONS[TURNS] = {"Describe the image.", "What colours dominate?", "Is there a person?"};

static const ivl_model *model;
static const char *image_paths[2];
static int n_conv = 1000, warmup = 50;
static uint32_t max_tiles = 2;
static uint8_t frame[240 * 320 * 3];

static atomic_int next_conv;
static atomic_int done_conv;
static atomic_int errors;
static atomic_long rss_warm;
static pthread_mutex_t hash_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t first_hash[KINDS];
static int have_hash[KINDS];
static int mismatches[KINDS];
static int per_kind[KINDS];

static long rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* FNV-1a, continued over several strings. */
static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void fail(int conv, const char *what, ivl_status st) {
    atomic_fetch_add(&errors, 1);
    fprintf(stderr, "conversation %d: %s: %s: %s\n", conv, what, ivl_status_name(st), ivl_last_error());
}

/* One conversation; returns 0 on success. */
static int conversation(int conv) {
    int kind = conv % KINDS;
    ivl_session_params sp = ivl_session_default_params();
    sp.n_ctx = 2048;
    sp.n_threads = 1;
    sp.max_tiles = max_tiles;
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = 8;
    ivl_session *s = NULL;
    ivl_status st = ivl_session_new(model, &sp, &s);
    if (st != IVL_STATUS_OK) {
        fail(conv, "session_new", st);
        return 1;
    }
    uint64_t h = 1469598103934665603ull;
    int rc = 0;
    for (int turn = 0; turn < TURNS && rc == 0; turn++) {
        if (turn == 0) {
            st = kind < 2 ? ivl_session_add_image_file(s, image_paths[kind])
                          : ivl_session_add_image_rgb(s, frame, 320, 240, 320 * 3, IVL_PIXEL_FORMAT_RGB);
            if (st != IVL_STATUS_OK) {
                fail(conv, "add_image", st);
                rc = 1;
                break;
            }
        }
        st = ivl_session_prompt(s, QUESTIONS[turn]);
        if (st != IVL_STATUS_OK) {
            fail(conv, "prompt", st);
            rc = 1;
            break;
        }
        ivl_reply r;
        st = ivl_session_generate(s, &gp, NULL, NULL, &r);
        if (st != IVL_STATUS_OK) {
            fail(conv, "generate", st);
            rc = 1;
            break;
        }
        h = fnv1a(h, r.text, r.text_len);
        h = fnv1a(h, "\x1f", 1);
    }
    st = ivl_session_free(s);
    if (st != IVL_STATUS_OK) {
        fail(conv, "session_free", st);
        rc = 1;
    }
    if (rc == 0) {
        pthread_mutex_lock(&hash_lock);
        per_kind[kind]++;
        if (!have_hash[kind]) {
            have_hash[kind] = 1;
            first_hash[kind] = h;
        } else if (first_hash[kind] != h) {
            mismatches[kind]++;
        }
        pthread_mutex_unlock(&hash_lock);
    }
    return rc;
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        int conv = atomic_fetch_add(&next_conv, 1);
        if (conv >= n_conv) break;
        conversation(conv);
        int done = atomic_fetch_add(&done_conv, 1) + 1;
        if (done == warmup) atomic_store(&rss_warm, rss_bytes());
        if (done % 100 == 0) fprintf(stderr, "%d conversations, RSS %.1f MiB\n", done, rss_bytes() / 1048576.0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: soak MODEL.gguf IMAGE1 IMAGE2 [CONVERSATIONS=1000] [THREADS=4] [WARMUP=50] [MAX_TILES=2]\n");
        return 2;
    }
    image_paths[0] = argv[2];
    image_paths[1] = argv[3];
    if (argc > 4) n_conv = atoi(argv[4]);
    int n_threads = argc > 5 ? atoi(argv[5]) : 4;
    if (argc > 6) warmup = atoi(argv[6]);
    if (argc > 7) max_tiles = (uint32_t)atoi(argv[7]);
    if (n_conv < 1 || n_threads < 1 || n_threads > 64 || warmup < 1 || warmup >= n_conv) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    for (int y = 0; y < 240; y++)
        for (int x = 0; x < 320; x++) {
            uint8_t *p = &frame[(y * 320 + x) * 3];
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)(y * 2);
            p[2] = (uint8_t)((x + y) / 3);
        }

    double t0 = now_s();
    ivl_model_params mp = ivl_model_default_params();
    mp.n_threads = 1;
    ivl_model *m = NULL;
    ivl_status st = ivl_model_load(argv[1], &mp, &m);
    if (st != IVL_STATUS_OK) {
        fprintf(stderr, "load: %s: %s\n", ivl_status_name(st), ivl_last_error());
        return 2;
    }
    model = m;
    long rss_start = rss_bytes();

    pthread_t th[64];
    for (int i = 0; i < n_threads; i++) pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < n_threads; i++) pthread_join(th[i], NULL);
    long rss_end = rss_bytes();
    double wall = now_s() - t0;
    ivl_model_free(m);

    long warm = atomic_load(&rss_warm);
    double growth = warm > 0 ? 100.0 * (double)(rss_end - warm) / (double)warm : 1e9;
    int total_mismatch = 0, kinds_seen = 0;
    printf("conversations: %d (%d turns each, an image in the first), threads: %d, max_new_tokens: 8, n_ctx: 2048, "
           "max_tiles: %u\n",
           atomic_load(&done_conv), TURNS, n_threads, max_tiles);
    for (int k = 0; k < KINDS; k++) {
        printf("  %-9s %4d conversations, answer hash %016llx, %d different\n", KIND_NAMES[k], per_kind[k],
               (unsigned long long)first_hash[k], mismatches[k]);
        total_mismatch += mismatches[k];
        kinds_seen += have_hash[k];
    }
    printf("RSS: after load %.1f MiB, after %d conversations (warm-up) %.1f MiB, at the end %.1f MiB (%+.2f%%)\n",
           rss_start / 1048576.0, warmup, warm / 1048576.0, rss_end / 1048576.0, growth);
    printf("errors: %d, wall time: %.1f s (%.2f s per conversation)\n", atomic_load(&errors), wall,
           wall / (double)n_conv);
    int pass_rss = growth <= 5.0; /* a fall is no leak */
    int pass = pass_rss && atomic_load(&errors) == 0 && total_mismatch == 0 && kinds_seen == KINDS;
    printf("RSS within 5%% of warm-up: %s; 0 errors: %s; identical answers for identical inputs: %s\n",
           pass_rss ? "PASS" : "FAIL", atomic_load(&errors) == 0 ? "PASS" : "FAIL",
           total_mismatch == 0 && kinds_seen == KINDS ? "PASS" : "FAIL");
    printf("%s\n", pass ? "SOAK PASS" : "SOAK FAIL");
    return pass ? 0 : 1;
}
