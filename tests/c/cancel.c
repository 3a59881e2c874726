/* Progress, cancellation and encoded images from memory through the C ABI (run by tests/capi.rs).
 *
 *   cancel MODEL.gguf IMAGE
 *
 * IMAGE should give 13 tiles (12 + the thumbnail). A full run measures one vision batch (the time
 * between two vision progress reports); a second run, on a fresh session, is cancelled from another
 * thread half a batch after the first report, and the time from ivl_session_cancel to the return of
 * ivl_session_generate is compared with one batch. Prints one line per check and a "figures:" line;
 * exits with the number of failed checks. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internvl.h"

static int failures = 0;

static void expect(const char *what, ivl_status got, ivl_status want) {
    int ok = got == want;
    printf("%s %s: %s (want %s)%s%s\n", ok ? "ok  " : "FAIL", what, ivl_status_name(got), ivl_status_name(want),
           got == IVL_STATUS_OK ? "" : ": ", got == IVL_STATUS_OK ? "" : ivl_last_error());
    failures += !ok;
}

static void check(const char *what, int cond) {
    printf("%s %s\n", cond ? "ok  " : "FAIL", what);
    failures += !cond;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
    struct timespec t = {(time_t)(ms / 1e3), (long)((ms - (double)(time_t)(ms / 1e3) * 1e3) * 1e6)};
    nanosleep(&t, NULL);
}

/* What the progress callback saw. */
struct progress {
    double vision_at[64];
    int vision_events;
    uint32_t vision_total;
    int prefill_events;
    atomic_int first_vision; /* set at the first vision report: the canceller's signal */
    int stop_at_prefill;     /* return non-zero at the first prefill report */
};

static int on_progress(ivl_stage stage, uint32_t done, uint32_t total, void *user_data) {
    struct progress *p = user_data;
    (void)done;
    if (stage == IVL_STAGE_VISION) {
        if (p->vision_events < 64) p->vision_at[p->vision_events] = now_ms();
        p->vision_events++;
        p->vision_total = total;
        atomic_store(&p->first_vision, 1);
    } else if (stage == IVL_STAGE_PREFILL) {
        p->prefill_events++;
        if (p->stop_at_prefill) return 1;
    }
    return 0;
}

struct canceller {
    ivl_session *session;
    struct progress *progress;
    double delay_ms;
    double cancelled_at;
    ivl_status status;
};

static void *cancel_later(void *arg) {
    struct canceller *c = arg;
    while (!atomic_load(&c->progress->first_vision)) sleep_ms(0.05);
    sleep_ms(c->delay_ms);
    c->cancelled_at = now_ms();
    c->status = ivl_session_cancel(c->session);
    return NULL;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n)) != NULL) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

static ivl_session *new_session(ivl_model *m) {
    ivl_session_params sp = ivl_session_default_params();
    sp.n_ctx = 4096;
    sp.n_threads = 1;
    ivl_session *s = NULL;
    expect("ivl_session_new", ivl_session_new(m, &sp, &s), IVL_STATUS_OK);
    return s;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf IMAGE\n", argv[0]);
        return 2;
    }
    size_t len = 0;
    unsigned char *bytes = read_file(argv[2], &len);
    if (!bytes) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 2;
    }
    ivl_model_params mp = ivl_model_default_params();
    ivl_model *m = NULL;
    expect("ivl_model_load", ivl_model_load(argv[1], &mp, &m), IVL_STATUS_OK);
    if (!m) return 1;
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = 4;
    ivl_reply r;

    /* 1. A full run from the file: progress for every vision batch and prefill chunk. */
    ivl_session *a = new_session(m);
    struct progress full = {0};
    expect("set_progress_callback", ivl_session_set_progress_callback(a, on_progress, &full), IVL_STATUS_OK);
    expect("add_image_file", ivl_session_add_image_file(a, argv[2]), IVL_STATUS_OK);
    expect("prompt", ivl_session_prompt(a, "Describe the image."), IVL_STATUS_OK);
    expect("generate (full)", ivl_session_generate(a, &gp, NULL, NULL, &r), IVL_STATUS_OK);
    char from_file[256];
    snprintf(from_file, sizeof from_file, "%s", r.text);
    uint32_t tiles = r.tiles_encoded;
    check("13 tiles encoded", tiles == 13 && full.vision_total == 13);
    check("several vision batches reported", full.vision_events >= 2);
    check("prefill reported", full.prefill_events >= 1);
    double batch_sum = 0, batch_max = 0;
    for (int i = 1; i < full.vision_events && i < 64; i++) {
        double d = full.vision_at[i] - full.vision_at[i - 1];
        batch_sum += d;
        if (d > batch_max) batch_max = d;
    }
    double batch_mean = full.vision_events > 1 ? batch_sum / (full.vision_events - 1) : 0;

    /* No call running: cancel does nothing, and the next call is not cancelled. */
    expect("cancel with no call running", ivl_session_cancel(a), IVL_STATUS_OK);
    expect("prompt after an idle cancel", ivl_session_prompt(a, "And the colours?"), IVL_STATUS_OK);
    expect("generate after an idle cancel", ivl_session_generate(a, &gp, NULL, NULL, &r), IVL_STATUS_OK);
    check("an idle cancel does not carry over", r.finish != IVL_FINISH_CANCELLED && r.generated_tokens > 0);

    /* 2. The same image from memory: the same answer. */
    ivl_session *b = new_session(m);
    expect("add_image_bytes", ivl_session_add_image_bytes(b, bytes, len), IVL_STATUS_OK);
    expect("prompt (bytes)", ivl_session_prompt(b, "Describe the image."), IVL_STATUS_OK);
    expect("generate (bytes)", ivl_session_generate(b, &gp, NULL, NULL, &r), IVL_STATUS_OK);
    check("bytes and file give the same answer", strcmp(r.text, from_file) == 0 && r.tiles_encoded == tiles);
    expect("add_image_bytes NULL", ivl_session_add_image_bytes(b, NULL, 10), IVL_STATUS_INVALID_ARGUMENT);
    expect("add_image_bytes len 0", ivl_session_add_image_bytes(b, bytes, 0), IVL_STATUS_INVALID_ARGUMENT);
    expect("add_image_bytes not an image", ivl_session_add_image_bytes(b, (const uint8_t *)"hello world", 11),
           IVL_STATUS_INVALID_IMAGE);
    expect("add_image_bytes truncated", ivl_session_add_image_bytes(b, bytes, len / 2), IVL_STATUS_INVALID_IMAGE);
    expect("cancel NULL", ivl_session_cancel(NULL), IVL_STATUS_INVALID_ARGUMENT);
    expect("cancel a model handle", ivl_session_cancel((ivl_session *)m), IVL_STATUS_BAD_STATE);
    expect("free b", ivl_session_free(b), IVL_STATUS_OK);
    expect("cancel a freed session", ivl_session_cancel(b), IVL_STATUS_BAD_STATE);

    /* 3. Cancelled from another thread during vision encoding, half a batch after the first report. */
    ivl_session *c = new_session(m);
    struct progress seen = {0};
    expect("set_progress_callback (c)", ivl_session_set_progress_callback(c, on_progress, &seen), IVL_STATUS_OK);
    expect("add_image_bytes (c)", ivl_session_add_image_bytes(c, bytes, len), IVL_STATUS_OK);
    expect("prompt (c)", ivl_session_prompt(c, "Describe the image."), IVL_STATUS_OK);
    struct canceller cc = {c, &seen, batch_mean / 2, 0, IVL_STATUS_INTERNAL};
    pthread_t t;
    pthread_create(&t, NULL, cancel_later, &cc);
    ivl_status st = ivl_session_generate(c, &gp, NULL, NULL, &r);
    double returned_at = now_ms();
    pthread_join(t, NULL);
    expect("generate (cancelled)", st, IVL_STATUS_OK);
    expect("ivl_session_cancel from another thread", cc.status, IVL_STATUS_OK);
    check("finish is IVL_FINISH_CANCELLED", r.finish == IVL_FINISH_CANCELLED);
    check("no token generated", r.generated_tokens == 0);
    check("stopped before the last vision batch", seen.vision_events < full.vision_events);
    double cancel_to_return = returned_at - cc.cancelled_at;
    printf("figures: vision batches %d for %u tiles, batch mean %.2f ms, max %.2f ms; cancelled %.2f ms after the "
           "first report, control back %.2f ms after ivl_session_cancel (%.2f batches); %d batch(es) reported\n",
           full.vision_events, tiles, batch_mean, batch_max, cc.delay_ms, cancel_to_return,
           batch_mean > 0 ? cancel_to_return / batch_mean : 0.0, seen.vision_events);
    /* Within one batch; 2 ms for thread wake-up on a loaded machine. */
    check("control back within one vision batch", cancel_to_return <= batch_max + 2.0);

    /* The question (with its image) was withdrawn: the session asks again and answers as before. */
    expect("add_image_bytes after the cancel", ivl_session_add_image_bytes(c, bytes, len), IVL_STATUS_OK);
    expect("prompt after the cancel", ivl_session_prompt(c, "Describe the image."), IVL_STATUS_OK);
    ivl_session_set_progress_callback(c, NULL, NULL);
    expect("generate after the cancel", ivl_session_generate(c, &gp, NULL, NULL, &r), IVL_STATUS_OK);
    check("the same answer after a cancel", strcmp(r.text, from_file) == 0);

    /* 4. The progress callback cancels at the first prefill chunk. */
    struct progress stop = {0};
    stop.stop_at_prefill = 1;
    expect("reset", ivl_session_reset(a), IVL_STATUS_OK);
    expect("set_progress_callback (stop)", ivl_session_set_progress_callback(a, on_progress, &stop), IVL_STATUS_OK);
    expect("prompt (stop)", ivl_session_prompt(a, "A long question about nothing in particular."), IVL_STATUS_OK);
    expect("generate (stop)", ivl_session_generate(a, &gp, NULL, NULL, &r), IVL_STATUS_OK);
    check("a non-zero progress return cancels", r.finish == IVL_FINISH_CANCELLED && stop.prefill_events == 1);

    ivl_session_free(a);
    ivl_session_free(c);
    ivl_model_free(m);
    free(bytes);
    printf("%d failure(s)\n", failures);
    return failures;
}
