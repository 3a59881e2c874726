/* API misuse through the C ABI (run by tests/capi.rs, also under valgrind): calls in the wrong order,
 * double frees, stale and foreign handles, calls on a session from inside its own token callback, a
 * model freed while sessions on other threads still use it, and memory budget refusals.
 *
 *   misuse MODEL.gguf
 *
 * Prints one line per check; exits with the number of failed checks. Stale handles are passed to the
 * library on purpose: it must refuse them without reading the freed memory (valgrind checks that). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internvl.h"

static int failures = 0;

static void expect(const char *what, ivl_status got, ivl_status want) {
    int ok = got == want;
    printf("%s %s: %s (want %s)%s%s\n", ok ? "ok  " : "FAIL", what, ivl_status_name(got), ivl_status_name(want),
           want == IVL_STATUS_OK ? "" : ": ", want == IVL_STATUS_OK ? "" : ivl_last_error());
    failures += !ok;
}

static void check(const char *what, int cond) {
    printf("%s %s\n", cond ? "ok  " : "FAIL", what);
    failures += !cond;
}

static ivl_session_params session_params(void) {
    ivl_session_params sp = ivl_session_default_params();
    sp.n_ctx = 256;
    sp.n_threads = 1;
    sp.max_tiles = 1;
    return sp;
}

static ivl_generate_params gen_params(void) {
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = 3;
    return gp;
}

/* One prompt and its answer, copied out (the reply text lives in the session). */
static ivl_status ask(ivl_session *s, const char *q, char *answer, size_t cap) {
    ivl_status st = ivl_session_prompt(s, q);
    if (st != IVL_STATUS_OK) return st;
    ivl_generate_params gp = gen_params();
    ivl_reply r;
    st = ivl_session_generate(s, &gp, NULL, NULL, &r);
    if (st == IVL_STATUS_OK && answer) snprintf(answer, cap, "%s", r.text);
    return st;
}

/* ---- calls on a session from inside its own token callback ---- */
struct reentry {
    ivl_session *session;
    int calls;
    ivl_status reset, prompt, generate, free_, add_image;
};

static int32_t reenter(const char *piece, size_t len, void *user_data) {
    (void)piece;
    (void)len;
    struct reentry *r = user_data;
    if (r->calls++ == 0) {
        uint8_t px[8 * 8 * 3] = {0};
        r->reset = ivl_session_reset(r->session);
        r->prompt = ivl_session_prompt(r->session, "inside");
        r->generate = ivl_session_generate(r->session, NULL, NULL, NULL, NULL);
        r->add_image = ivl_session_add_image_rgb(r->session, px, 8, 8, 24, IVL_PIXEL_FORMAT_RGB);
        r->free_ = ivl_session_free(r->session);
    }
    return 0;
}

/* ---- sessions on threads outliving their model handle ---- */
struct worker {
    ivl_session *session;
    pthread_barrier_t *start;
    char answers[2][256];
    ivl_status status;
};

static void *work(void *arg) {
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    w->status = ask(w->session, "Say something.", w->answers[0], sizeof w->answers[0]);
    if (w->status == IVL_STATUS_OK) w->status = ask(w->session, "And more.", w->answers[1], sizeof w->answers[1]);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: misuse MODEL.gguf\n");
        return 100;
    }
    ivl_model_params mp = ivl_model_default_params();
    mp.n_threads = 1;
    ivl_model *model = NULL;
    expect("load", ivl_model_load(argv[1], &mp, &model), IVL_STATUS_OK);
    if (!model) return 100;
    ivl_session_params sp = session_params();
    ivl_generate_params gp = gen_params();
    ivl_reply reply;

    /* ---- wrong order ---- */
    ivl_session *s = NULL;
    expect("session", ivl_session_new(model, &sp, &s), IVL_STATUS_OK);
    expect("generate before a prompt", ivl_session_generate(s, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE);
    const ivl_box *boxes = NULL;
    size_t n_boxes = 7;
    expect("boxes before any answer", ivl_session_boxes(s, &boxes, &n_boxes), IVL_STATUS_OK);
    check("no boxes before any answer", boxes == NULL && n_boxes == 0);
    expect("prompt", ivl_session_prompt(s, "Say something."), IVL_STATUS_OK);
    expect("second prompt while unanswered", ivl_session_prompt(s, "again"), IVL_STATUS_BAD_STATE);
    expect("generate", ivl_session_generate(s, &gp, NULL, NULL, &reply), IVL_STATUS_OK);
    char first[256];
    snprintf(first, sizeof first, "%s", reply.text);
    expect("generate twice for one prompt", ivl_session_generate(s, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE);
    expect("reset", ivl_session_reset(s), IVL_STATUS_OK);
    expect("generate after reset without a prompt", ivl_session_generate(s, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE);

    /* ---- re-entrant calls from the token callback are refused, the outer call completes ---- */
    struct reentry re = {s, 0, -1, -1, -1, -1, -1};
    expect("prompt for the re-entrant callback", ivl_session_prompt(s, "Say something."), IVL_STATUS_OK);
    expect("generate with a re-entrant callback", ivl_session_generate(s, &gp, reenter, &re, &reply), IVL_STATUS_OK);
    check("the callback ran", re.calls > 0);
    expect("reset from the callback", re.reset, IVL_STATUS_BAD_STATE);
    expect("prompt from the callback", re.prompt, IVL_STATUS_BAD_STATE);
    expect("generate from the callback", re.generate, IVL_STATUS_BAD_STATE);
    expect("add_image from the callback", re.add_image, IVL_STATUS_BAD_STATE);
    expect("free from the callback", re.free_, IVL_STATUS_BAD_STATE);
    check("the outer answer is the same as without the callback", strcmp(reply.text, first) == 0);
    expect("the session still works after the callback", ask(s, "And more.", NULL, 0), IVL_STATUS_OK);

    /* ---- double frees, stale and foreign handles ---- */
    ivl_session *s2 = NULL;
    expect("second session", ivl_session_new(model, &sp, &s2), IVL_STATUS_OK);
    expect("free it", ivl_session_free(s2), IVL_STATUS_OK);
    expect("free it again", ivl_session_free(s2), IVL_STATUS_BAD_STATE);
    check("the message says why", strstr(ivl_last_error(), "not a live handle") != NULL);
    expect("prompt on the freed session", ivl_session_prompt(s2, "hi"), IVL_STATUS_BAD_STATE);
    expect("generate on the freed session", ivl_session_generate(s2, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE);
    expect("reset on the freed session", ivl_session_reset(s2), IVL_STATUS_BAD_STATE);
    int local = 0;
    expect("a stack address as a session", ivl_session_prompt((ivl_session *)&local, "hi"), IVL_STATUS_BAD_STATE);
    expect("a stack address as a model", ivl_session_new((const ivl_model *)&local, &sp, &s2), IVL_STATUS_BAD_STATE);
    expect("free a stack address as a model", ivl_model_free((ivl_model *)&local), IVL_STATUS_BAD_STATE);
    expect("free a stack address as a session", ivl_session_free((ivl_session *)&local), IVL_STATUS_BAD_STATE);
    expect("a session handle as a model", ivl_session_new((const ivl_model *)s, &sp, &s2), IVL_STATUS_BAD_STATE);
    expect("free a session handle as a model", ivl_model_free((ivl_model *)s), IVL_STATUS_BAD_STATE);
    expect("free a model handle as a session", ivl_session_free((ivl_session *)model), IVL_STATUS_BAD_STATE);
    expect("free NULL model", ivl_model_free(NULL), IVL_STATUS_OK);
    expect("free NULL session", ivl_session_free(NULL), IVL_STATUS_OK);

    /* ---- memory budget ---- */
    ivl_session *b = NULL;
    ivl_session_params bp = sp;
    bp.mem_budget = 1 << 20;
    expect("a 1 MiB budget is below the KV cache", ivl_session_new(model, &bp, &b), IVL_STATUS_BUDGET);
    check("the message gives the KV cache", strstr(ivl_last_error(), "KV cache") != NULL);
    check("the failed session_new left the output alone", b == NULL);
    bp.mem_budget = (uint64_t)1 << 40;
    expect("a 1 TiB budget", ivl_session_new(model, &bp, &b), IVL_STATUS_OK);
    expect("free it", ivl_session_free(b), IVL_STATUS_OK);

    /* ---- the model freed while sessions on two threads use it ---- */
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 3);
    struct worker w[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].start = &start;
        expect("worker session", ivl_session_new(model, &sp, &w[i].session), IVL_STATUS_OK);
        pthread_create(&th[i], NULL, work, &w[i]);
    }
    expect("free the model while the workers start", ivl_model_free(model), IVL_STATUS_OK);
    pthread_barrier_wait(&start);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < 2; i++) {
        expect("worker answered after the model handle was freed", w[i].status, IVL_STATUS_OK);
        check("and as the session did while the model was live", strcmp(w[i].answers[0], first) == 0);
    }
    expect("free the model twice", ivl_model_free(model), IVL_STATUS_BAD_STATE);
    expect("a session on the freed model", ivl_session_new(model, &sp, &s2), IVL_STATUS_BAD_STATE);
    expect("the first session still answers", ask(s, "Still there?", NULL, 0), IVL_STATUS_OK);
    for (int i = 0; i < 2; i++) expect("free a worker session", ivl_session_free(w[i].session), IVL_STATUS_OK);
    expect("free the last session (the weights go with it)", ivl_session_free(s), IVL_STATUS_OK);
    expect("and it is gone", ivl_session_reset(s), IVL_STATUS_BAD_STATE);

    printf("%d failure(s)\n", failures);
    return failures > 99 ? 99 : failures;
}
