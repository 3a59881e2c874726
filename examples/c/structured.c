/* structured: a schema-constrained answer about a camera frame, as a robot program wants it:
 * {"object": "cup", "box": [x1, y1, x2, y2], "graspable": true}, never free text to parse.
 *
 *   structured [-n MAX_NEW_TOKENS] [-t THREADS] [-s SEED] MODEL.gguf
 *
 * The frame is raw RGB pixels (ivl_session_add_image_rgb), synthesized here: replace grab_frame() with
 * your capture call. The JSON Schema goes in ivl_generate_params.json_schema; the library compiles it
 * before evaluating anything (a bad schema is IVL_STATUS_INVALID_ARGUMENT with the reason in
 * ivl_last_error()) and masks every token that would leave it. A stop string and a log-probability
 * callback show the other two structured-answer fields. Exit status: 0 on a complete answer, 1 on an
 * error, 3 when max_new_tokens ran out before the JSON was complete (finish IVL_FINISH_LENGTH).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internvl.h"

enum { WIDTH = 320, HEIGHT = 240 };

static const char *SCHEMA =
    "{\"type\": \"object\", \"additionalProperties\": false,"
    " \"required\": [\"object\", \"box\", \"graspable\"],"
    " \"properties\": {"
    "   \"object\": {\"enum\": [\"cup\", \"bottle\", \"box\", \"nothing\"]},"
    "   \"box\": {\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 1000},"
    "            \"minItems\": 4, \"maxItems\": 4},"
    "   \"graspable\": {\"type\": \"boolean\"}}}";

/* A red disc (the "cup") on a grey table, RGB. */
static void grab_frame(uint8_t *rgb) {
    for (int y = 0; y < HEIGHT; y++) {
        for (int x = 0; x < WIDTH; x++) {
            int dx = x - 200, dy = y - 140, inside = dx * dx + dy * dy < 40 * 40;
            uint8_t *p = rgb + ((size_t)y * WIDTH + (size_t)x) * 3;
            p[0] = inside ? 200 : 120;
            p[1] = inside ? 30 : 120;
            p[2] = inside ? 30 : 125;
        }
    }
}

struct tally {
    size_t tokens;
    double sum_logprob;
};

/* Called once per answer token with its log-probability under the model (before the schema's mask). */
static int32_t on_logprob(const ivl_logprob *lp, void *user_data) {
    struct tally *t = (struct tally *)user_data;
    t->tokens++;
    t->sum_logprob += lp->logprob;
    return 0;
}

static int fail(const char *what, ivl_status st) {
    fprintf(stderr, "%s: %s: %s\n", what, ivl_status_name((int32_t)st), ivl_last_error());
    return 1;
}

int main(int argc, char **argv) {
    ivl_model_params mp = ivl_model_default_params();
    ivl_session_params sp = ivl_session_default_params();
    ivl_generate_params gp = ivl_generate_default_params();
    sp.n_ctx = 1024;
    sp.max_tiles = 1;
    gp.max_new_tokens = 96;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "-n") == 0) gp.max_new_tokens = (uint32_t)v;
        else if (strcmp(argv[i], "-t") == 0) mp.n_threads = (uint32_t)v;
        else if (strcmp(argv[i], "-s") == 0) {
            gp.seed = (uint64_t)v;
            gp.temperature = 1.0f;
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "usage: structured [-n MAX_NEW_TOKENS] [-t THREADS] [-s SEED] MODEL.gguf\n");
        return 2;
    }

    ivl_model *model = NULL;
    ivl_session *session = NULL;
    uint8_t *frame = malloc((size_t)WIDTH * HEIGHT * 3);
    int rc = 1;
    ivl_status st;
    if (!frame) return 1;
    grab_frame(frame);
    if ((st = ivl_model_load(argv[i], &mp, &model)) != IVL_STATUS_OK) {
        rc = fail("load", st);
        goto done;
    }
    if ((st = ivl_session_new(model, &sp, &session)) != IVL_STATUS_OK) {
        rc = fail("session", st);
        goto done;
    }
    if ((st = ivl_session_add_image_rgb(session, frame, WIDTH, HEIGHT, WIDTH * 3, IVL_PIXEL_FORMAT_RGB)) !=
        IVL_STATUS_OK) {
        rc = fail("frame", st);
        goto done;
    }
    if ((st = ivl_session_prompt(session, "Which object is on the table, where is it, and can the arm grasp it? "
                                          "Answer in JSON.")) != IVL_STATUS_OK) {
        rc = fail("prompt", st);
        goto done;
    }
    static const char *const stops[] = {"\n\n"};
    struct tally tally = {0, 0.0};
    gp.json_schema = SCHEMA;
    gp.stop = stops;
    gp.n_stop = 1;
    gp.logprob_callback = on_logprob;
    gp.top_logprobs = 3;
    ivl_reply reply;
    if ((st = ivl_session_generate(session, &gp, NULL, &tally, &reply)) != IVL_STATUS_OK) {
        rc = fail("generate", st);
        goto done;
    }
    printf("%s\n", reply.text);
    fprintf(stderr, "finish %d, %u tokens, mean logprob %.3f\n", (int)reply.finish, reply.generated_tokens,
            tally.tokens ? tally.sum_logprob / (double)tally.tokens : 0.0);
    if (tally.tokens != reply.generated_tokens) {
        fprintf(stderr, "logprob callback saw %zu tokens, the reply has %u\n", tally.tokens, reply.generated_tokens);
        goto done;
    }
    rc = reply.finish == IVL_FINISH_STOP ? 0 : 3;

    /* A schema that does not compile is refused before anything runs, with the reason. */
    gp.json_schema = "{\"type\": \"frobnicate\"}";
    gp.logprob_callback = NULL;
    if (ivl_session_prompt(session, "Again?") == IVL_STATUS_OK) {
        st = ivl_session_generate(session, &gp, NULL, NULL, NULL);
        fprintf(stderr, "bad schema: %s: %s\n", ivl_status_name((int32_t)st), ivl_last_error());
        if (st != IVL_STATUS_INVALID_ARGUMENT) rc = 1;
    }
done:
    ivl_session_free(session);
    ivl_model_free(model);
    free(frame);
    return rc;
}
