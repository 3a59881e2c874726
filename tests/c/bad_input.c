/* Bad input through the C API (run by tests/capi.rs): every call must return an error status with
 * a message, leave its outputs untouched, and the process must survive.
 *
 *   bad_input MODEL.gguf CORRUPT.gguf TRUNCATED.gguf NOT_AN_IMAGE
 *
 * Prints one line per check; exits with the number of failed checks. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internvl.h"

static int failures = 0;

/* Checks a status and that the thread's last error names the function. */
static void expect(const char *what, ivl_status got, ivl_status want, const char *fn) {
    const char *msg = ivl_last_error();
    int ok = got == want && (want == IVL_STATUS_OK || (msg && strstr(msg, fn) != NULL));
    printf("%s %s: %s (want %s): %s\n", ok ? "ok  " : "FAIL", what, ivl_status_name(got), ivl_status_name(want),
           want == IVL_STATUS_OK ? "" : msg);
    failures += !ok;
}

static void check(const char *what, int cond) {
    printf("%s %s\n", cond ? "ok  " : "FAIL", what);
    failures += !cond;
}

static int32_t stop_at_once(const char *piece, size_t len, void *user_data) {
    (void)piece;
    (void)len;
    *(int *)user_data += 1;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bad_input MODEL.gguf CORRUPT.gguf TRUNCATED.gguf NOT_AN_IMAGE\n");
        return 100;
    }
    const char *model_path = argv[1];
    ivl_model *const MODEL_SENTINEL = (ivl_model *)(uintptr_t)0x5a5a;
    ivl_session *const SESSION_SENTINEL = (ivl_session *)(uintptr_t)0xa5a5;
    ivl_model *model = MODEL_SENTINEL;
    ivl_session *session = SESSION_SENTINEL;

    /* ---- model loading ---- */
    ivl_model_params mp = ivl_model_default_params();
    mp.n_threads = 1;
    expect("load NULL path", ivl_model_load(NULL, &mp, &model), IVL_STATUS_INVALID_ARGUMENT, "ivl_model_load");
    expect("load empty path", ivl_model_load("", &mp, &model), IVL_STATUS_INVALID_ARGUMENT, "ivl_model_load");
    expect("load NULL out", ivl_model_load(model_path, &mp, NULL), IVL_STATUS_INVALID_ARGUMENT, "ivl_model_load");
    expect("load missing file", ivl_model_load("/nonexistent/dir/model.gguf", &mp, &model), IVL_STATUS_IO, "ivl_model_load");
    check("missing file: the message names the path", strstr(ivl_last_error(), "/nonexistent/dir/model.gguf") != NULL);
    expect("load corrupt GGUF", ivl_model_load(argv[2], &mp, &model), IVL_STATUS_INVALID_MODEL, "ivl_model_load");
    expect("load truncated GGUF", ivl_model_load(argv[3], &mp, &model), IVL_STATUS_INVALID_MODEL, "ivl_model_load");
    expect("load an image as a model", ivl_model_load(argv[4], &mp, &model), IVL_STATUS_INVALID_MODEL, "ivl_model_load");
    ivl_model_params bad_mp = mp;
    bad_mp.device = 7;
    expect("load unknown device", ivl_model_load(model_path, &bad_mp, &model), IVL_STATUS_INVALID_ARGUMENT, "ivl_model_load");
    bad_mp = mp;
    bad_mp.n_threads = 100000;
    expect("load 100000 threads", ivl_model_load(model_path, &bad_mp, &model), IVL_STATUS_INVALID_ARGUMENT, "ivl_model_load");
    bad_mp = mp;
    bad_mp.tokenizer_dir = "/nonexistent/tokenizer";
    ivl_status st = ivl_model_load(model_path, &bad_mp, &model);
    check("load with a missing tokenizer dir fails", st != IVL_STATUS_OK && strlen(ivl_last_error()) > 0);
    check("failed loads left the output alone", model == MODEL_SENTINEL);
    expect("load the model", ivl_model_load(model_path, &mp, &model), IVL_STATUS_OK, "ivl_model_load");
    if (model == MODEL_SENTINEL || model == NULL) {
        printf("FAIL cannot continue without a model\n");
        return 100;
    }

    /* ---- sessions ---- */
    ivl_session_params sp = ivl_session_default_params();
    sp.n_ctx = 512;
    sp.max_tiles = 1;
    ivl_session_params bad_sp;
    expect("session NULL model", ivl_session_new(NULL, &sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    expect("session NULL out", ivl_session_new(model, &sp, NULL), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.n_ctx = 0;
    expect("session n_ctx 0", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.n_ctx = 1u << 30;
    expect("session n_ctx 2^30", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.kv_type = 9;
    expect("session unknown KV type", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.n_batch = 0;
    expect("session n_batch 0", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.max_tiles = 41;
    expect("session max_tiles 41", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_new");
    bad_sp = sp;
    bad_sp.system_prompt = "\xff\xfe not UTF-8";
    expect("session non-UTF-8 system prompt", ivl_session_new(model, &bad_sp, &session), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_new");
    check("failed session_new left the output alone", session == SESSION_SENTINEL);
    expect("session new", ivl_session_new(model, &sp, &session), IVL_STATUS_OK, "ivl_session_new");

    /* ---- images ---- */
    uint8_t pixels[64 * 48 * 4];
    for (size_t i = 0; i < sizeof pixels; i++) pixels[i] = (uint8_t)(i * 7);
    expect("rgb NULL session", ivl_session_add_image_rgb(NULL, pixels, 64, 48, 192, IVL_PIXEL_FORMAT_RGB), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb NULL data", ivl_session_add_image_rgb(session, NULL, 64, 48, 192, IVL_PIXEL_FORMAT_RGB), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb width 0", ivl_session_add_image_rgb(session, pixels, 0, 48, 192, IVL_PIXEL_FORMAT_RGB), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb height 0", ivl_session_add_image_rgb(session, pixels, 64, 0, 192, IVL_PIXEL_FORMAT_RGB), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb stride < width*3", ivl_session_add_image_rgb(session, pixels, 64, 48, 100, IVL_PIXEL_FORMAT_RGB),
           IVL_STATUS_INVALID_ARGUMENT, "ivl_session_add_image_rgb");
    expect("rgba stride = width*3", ivl_session_add_image_rgb(session, pixels, 64, 48, 192, IVL_PIXEL_FORMAT_RGBA),
           IVL_STATUS_INVALID_ARGUMENT, "ivl_session_add_image_rgb");
    expect("rgb stride 0", ivl_session_add_image_rgb(session, pixels, 64, 48, 0, IVL_PIXEL_FORMAT_BGR), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb unknown format", ivl_session_add_image_rgb(session, pixels, 64, 48, 256, 9), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_add_image_rgb");
    expect("rgb 100000x100000 (not read)", ivl_session_add_image_rgb(session, pixels, 100000, 100000, 300000, IVL_PIXEL_FORMAT_RGB),
           IVL_STATUS_INVALID_IMAGE, "ivl_session_add_image_rgb");
    expect("rgb stride overflows", ivl_session_add_image_rgb(session, pixels, 64, 3, SIZE_MAX / 2, IVL_PIXEL_FORMAT_RGB),
           IVL_STATUS_INVALID_ARGUMENT, "ivl_session_add_image_rgb");
    expect("file NULL session", ivl_session_add_image_file(NULL, argv[4]), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_add_image_file");
    expect("file NULL path", ivl_session_add_image_file(session, NULL), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_add_image_file");
    expect("file missing", ivl_session_add_image_file(session, "/nonexistent/frame.png"), IVL_STATUS_IO, "ivl_session_add_image_file");
    expect("file not an image", ivl_session_add_image_file(session, argv[2]), IVL_STATUS_INVALID_IMAGE, "ivl_session_add_image_file");

    /* ---- prompts and generation ---- */
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = 4;
    ivl_generate_params bad_gp;
    ivl_reply reply;
    memset(&reply, 0x77, sizeof reply);
    expect("generate before any prompt", ivl_session_generate(session, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE,
           "ivl_session_generate");
    check("failed generate left the reply alone", reply.text_len == (size_t)0x7777777777777777ull);
    expect("prompt NULL session", ivl_session_prompt(NULL, "hi"), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_prompt");
    expect("prompt NULL text", ivl_session_prompt(session, NULL), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_prompt");
    expect("prompt non-UTF-8", ivl_session_prompt(session, "\xc3\x28"), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_prompt");
    expect("prompt with 2 placeholders, 0 images", ivl_session_prompt(session, "<image> and <image>"), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_prompt");
    expect("prompt", ivl_session_prompt(session, "Say something."), IVL_STATUS_OK, "ivl_session_prompt");
    expect("second prompt while unanswered", ivl_session_prompt(session, "again"), IVL_STATUS_BAD_STATE, "ivl_session_prompt");
    bad_gp = gp;
    bad_gp.max_new_tokens = 0;
    expect("generate max_new_tokens 0", ivl_session_generate(session, &bad_gp, NULL, NULL, &reply), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_generate");
    bad_gp = gp;
    bad_gp.top_p = 0.0f;
    expect("generate top_p 0", ivl_session_generate(session, &bad_gp, NULL, NULL, &reply), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_generate");
    bad_gp = gp;
    bad_gp.temperature = NAN;
    expect("generate temperature NaN", ivl_session_generate(session, &bad_gp, NULL, NULL, &reply), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_generate");
    expect("generate NULL session", ivl_session_generate(NULL, &gp, NULL, NULL, &reply), IVL_STATUS_INVALID_ARGUMENT,
           "ivl_session_generate");
    int calls = 0;
    expect("generate, callback stops at once", ivl_session_generate(session, &gp, stop_at_once, &calls, &reply), IVL_STATUS_OK,
           "ivl_session_generate");
    check("callback stop: finish is CANCELLED after one piece", reply.finish == IVL_FINISH_CANCELLED && calls == 1 &&
                                                                    reply.generated_tokens <= 2);
    expect("reset", ivl_session_reset(session), IVL_STATUS_OK, "ivl_session_reset");
    expect("prompt after reset", ivl_session_prompt(session, "Count."), IVL_STATUS_OK, "ivl_session_prompt");
    expect("generate after reset", ivl_session_generate(session, &gp, NULL, NULL, &reply), IVL_STATUS_OK, "ivl_session_generate");

    /* An image that does not fit the context: 256 image tokens in 64. */
    ivl_session *small = NULL;
    bad_sp = sp;
    bad_sp.n_ctx = 64;
    expect("session n_ctx 64", ivl_session_new(model, &bad_sp, &small), IVL_STATUS_OK, "ivl_session_new");
    expect("rgb frame", ivl_session_add_image_rgb(small, pixels, 64, 48, 64 * 3, IVL_PIXEL_FORMAT_RGB), IVL_STATUS_OK,
           "ivl_session_add_image_rgb");
    expect("prompt with the frame", ivl_session_prompt(small, "What is this?"), IVL_STATUS_OK, "ivl_session_prompt");
    expect("generate beyond the context", ivl_session_generate(small, &gp, NULL, NULL, &reply), IVL_STATUS_CONTEXT_FULL,
           "ivl_session_generate");
    expect("the failed question was withdrawn", ivl_session_generate(small, &gp, NULL, NULL, &reply), IVL_STATUS_BAD_STATE,
           "ivl_session_generate");
    expect("a text question still works", ivl_session_prompt(small, "Hi"), IVL_STATUS_OK, "ivl_session_prompt");
    /* Default parameters (up to 1024 tokens) end at this small context. */
    expect("and is answered, all optional pointers NULL", ivl_session_generate(small, NULL, NULL, NULL, NULL), IVL_STATUS_OK,
           "ivl_session_generate");
    ivl_session_free(small);

    /* ---- boxes, reset, free, names ---- */
    const ivl_box *boxes = NULL;
    size_t n_boxes = 99;
    expect("boxes NULL session", ivl_session_boxes(NULL, &boxes, &n_boxes), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_boxes");
    expect("boxes NULL out", ivl_session_boxes(session, NULL, &n_boxes), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_boxes");
    check("failed boxes left the count alone", n_boxes == 99);
    expect("reset NULL", ivl_session_reset(NULL), IVL_STATUS_INVALID_ARGUMENT, "ivl_session_reset");
    check("unknown status has a name", strcmp(ivl_status_name(-5), "IVL_STATUS_UNKNOWN") == 0);
    check("version is set", strlen(ivl_version()) > 0);
    ivl_session_free(NULL);
    ivl_model_free(NULL);
    /* Model freed before its session: the session keeps the weights alive. */
    ivl_model_free(model);
    expect("reset again", ivl_session_reset(session), IVL_STATUS_OK, "ivl_session_reset");
    expect("session outlives the model handle", ivl_session_prompt(session, "Still there?"), IVL_STATUS_OK, "ivl_session_prompt");
    expect("and answers", ivl_session_generate(session, &gp, NULL, NULL, &reply), IVL_STATUS_OK, "ivl_session_generate");
    ivl_session_free(session);

    printf("%d failure(s)\n", failures);
    return failures > 99 ? 99 : failures;
}
