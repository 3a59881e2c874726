/* camera_loop: the robotics loop. Each camera frame is handed over as raw pixels, a question is asked
 * about it and the answer is streamed; a time budget per frame cancels an answer that runs late.
 *
 *   camera_loop [-f FRAMES] [-n MAX_NEW_TOKENS] [-t THREADS] [-b BUDGET_MS] MODEL.gguf [QUESTION]
 *
 * The "camera" here synthesizes BGR frames with padded rows (stride > width * 3), as V4L2 and OpenCV
 * deliver them; replace grab_frame() with your capture call. docs/c-api.md walks through it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internvl.h"

enum { WIDTH = 160, HEIGHT = 120, STRIDE = WIDTH * 3 + 32 /* row padding */ };

/* A moving bright square on a gradient, in BGR order. */
static void grab_frame(uint8_t *frame, int index) {
    int sx = (index * 17) % (WIDTH - 32), sy = (index * 11) % (HEIGHT - 32);
    for (int y = 0; y < HEIGHT; y++) {
        uint8_t *row = frame + (size_t)y * STRIDE;
        for (int x = 0; x < WIDTH; x++) {
            int inside = x >= sx && x < sx + 32 && y >= sy && y < sy + 32;
            row[3 * x + 0] = inside ? 40 : (uint8_t)(x * 255 / WIDTH);  /* B */
            row[3 * x + 1] = inside ? 40 : (uint8_t)(y * 255 / HEIGHT); /* G */
            row[3 * x + 2] = inside ? 230 : 90;                        /* R */
        }
        memset(row + 3 * WIDTH, 0xAB, STRIDE - 3 * WIDTH); /* padding the library must skip */
    }
}

static double now_ms(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

struct stream {
    double deadline_ms; /* 0: no budget */
    int pieces;
};

/* Prints each piece as it arrives; asks to stop once the frame's time budget is spent. */
static int32_t on_piece(const char *piece, size_t len, void *user_data) {
    struct stream *s = (struct stream *)user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    s->pieces++;
    return s->deadline_ms > 0 && now_ms() > s->deadline_ms ? 1 : 0;
}

int main(int argc, char **argv) {
    int frames = 3;
    double budget_ms = 0;
    ivl_model_params mp = ivl_model_default_params();
    ivl_session_params sp = ivl_session_default_params();
    ivl_generate_params gp = ivl_generate_default_params();
    sp.n_ctx = 1024;
    sp.max_tiles = 1; /* one 448x448 tile per frame: the fastest setting */
    gp.max_new_tokens = 32;

    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "-f") == 0) frames = (int)v;
        else if (strcmp(argv[i], "-n") == 0) gp.max_new_tokens = (uint32_t)v;
        else if (strcmp(argv[i], "-t") == 0) mp.n_threads = (uint32_t)v;
        else if (strcmp(argv[i], "-b") == 0) budget_ms = (double)v;
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "usage: camera_loop [-f FRAMES] [-n MAX_NEW_TOKENS] [-t THREADS] [-b BUDGET_MS] MODEL.gguf [QUESTION]\n");
        return 2;
    }
    const char *question = i + 1 < argc ? argv[i + 1] : "Is there an obstacle in front of the robot?";

    int rc = 1;
    ivl_model *model = NULL;
    ivl_session *session = NULL;
    uint8_t *frame = malloc((size_t)STRIDE * HEIGHT);
    ivl_status st = IVL_STATUS_OK;
    if (!frame) goto done;
    if ((st = ivl_model_load(argv[i], &mp, &model)) != IVL_STATUS_OK) goto done;
    if ((st = ivl_session_new(model, &sp, &session)) != IVL_STATUS_OK) goto done;

    for (int f = 0; f < frames; f++) {
        grab_frame(frame, f);
        /* A fresh conversation per frame; the system prompt's KV rows are reused. */
        if ((st = ivl_session_reset(session)) != IVL_STATUS_OK) goto done;
        if ((st = ivl_session_add_image_rgb(session, frame, WIDTH, HEIGHT, STRIDE, IVL_PIXEL_FORMAT_BGR)) != IVL_STATUS_OK)
            goto done;
        if ((st = ivl_session_prompt(session, question)) != IVL_STATUS_OK) goto done;
        struct stream s = {budget_ms > 0 ? now_ms() + budget_ms : 0, 0};
        ivl_reply reply;
        printf("frame %d: ", f);
        if ((st = ivl_session_generate(session, &gp, on_piece, &s, &reply)) != IVL_STATUS_OK) goto done;
        printf("\n");
        fprintf(stderr, "frame %d: %u tokens, %u reused, %u tiles encoded, %.0f ms%s\n", f, reply.generated_tokens,
                reply.reused_tokens, reply.tiles_encoded, reply.total_ms,
                reply.finish == IVL_FINISH_CANCELLED ? " (cut at the time budget)" : "");
    }
    rc = 0;

done:
    if (st != IVL_STATUS_OK) fprintf(stderr, "camera_loop: %s: %s\n", ivl_status_name(st), ivl_last_error());
    ivl_session_free(session);
    ivl_model_free(model);
    free(frame);
    return rc;
}
