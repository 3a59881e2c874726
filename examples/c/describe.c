/* describe: load a model, show it an image, stream the answer to stdout. The image file (JPEG, PNG,
 * WebP...) is read into memory and handed over with ivl_session_add_image_bytes, as an app does with a
 * frame it received encoded (from a network, a camera's JPEG output); ivl_session_add_image_file reads
 * a path itself, ivl_session_add_image_rgb takes raw pixels.
 *
 *   describe [-n MAX_NEW_TOKENS] [-t THREADS] [-c N_CTX] [-m MAX_TILES] MODEL.gguf IMAGE [QUESTION]
 *
 * Build (after scripts/install.sh):
 *   cc -std=c11 describe.c $(pkg-config --cflags --libs internvl) -o describe
 * or from the repository after `cargo build --release`:
 *   cc -std=c11 -Iinclude examples/c/describe.c -Ltarget/release -linternvl \
 *      -Wl,-rpath,$PWD/target/release -o describe
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internvl.h"

/* Streams each piece of the answer as it is generated. Returning non-zero would stop. */
static int32_t print_piece(const char *piece, size_t len, void *user_data) {
    size_t *pieces = (size_t *)user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    *pieces += 1;
    return 0;
}

/* The whole file in a malloc'd buffer (NULL on failure, errno set). */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t grown = cap ? cap * 2 : 1 << 16;
            unsigned char *b = realloc(buf, grown);
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
            cap = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int fail(const char *what, ivl_status st) {
    fprintf(stderr, "describe: %s failed (%s): %s\n", what, ivl_status_name(st), ivl_last_error());
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: describe [-n MAX_NEW_TOKENS] [-t THREADS] [-c N_CTX] [-m MAX_TILES] MODEL.gguf IMAGE [QUESTION]\n");
}

int main(int argc, char **argv) {
    ivl_model_params mp = ivl_model_default_params();
    ivl_session_params sp = ivl_session_default_params();
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = 128;

    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        unsigned long v = strtoul(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "-n") == 0) {
            gp.max_new_tokens = (uint32_t)v;
        } else if (strcmp(argv[i], "-t") == 0) {
            mp.n_threads = (uint32_t)v;
        } else if (strcmp(argv[i], "-c") == 0) {
            sp.n_ctx = (uint32_t)v;
        } else if (strcmp(argv[i], "-m") == 0) {
            sp.max_tiles = (uint32_t)v;
        } else {
            usage();
            return 2;
        }
    }
    if (argc - i < 2) {
        usage();
        return 2;
    }
    const char *model_path = argv[i];
    const char *image_path = argv[i + 1];
    const char *question = argc - i > 2 ? argv[i + 2] : "Describe the image in detail.";

    int rc = 1;
    ivl_model *model = NULL;
    ivl_session *session = NULL;
    ivl_status st;
    size_t image_len = 0;
    unsigned char *image = NULL;

    fprintf(stderr, "internvl %s\n", ivl_version());
    if ((st = ivl_model_load(model_path, &mp, &model)) != IVL_STATUS_OK) {
        rc = fail("ivl_model_load", st);
        goto done;
    }
    if ((st = ivl_session_new(model, &sp, &session)) != IVL_STATUS_OK) {
        rc = fail("ivl_session_new", st);
        goto done;
    }
    if (!(image = read_file(image_path, &image_len))) {
        perror(image_path);
        goto done;
    }
    /* The library decodes the bytes during the call: the buffer can go right after. */
    st = ivl_session_add_image_bytes(session, image, image_len);
    free(image);
    image = NULL;
    if (st != IVL_STATUS_OK) {
        rc = fail("ivl_session_add_image_bytes", st);
        goto done;
    }
    if ((st = ivl_session_prompt(session, question)) != IVL_STATUS_OK) {
        rc = fail("ivl_session_prompt", st);
        goto done;
    }

    size_t pieces = 0;
    ivl_reply reply;
    if ((st = ivl_session_generate(session, &gp, print_piece, &pieces, &reply)) != IVL_STATUS_OK) {
        rc = fail("ivl_session_generate", st);
        goto done;
    }
    printf("\n");

    const ivl_box *boxes = NULL;
    size_t n_boxes = 0;
    if ((st = ivl_session_boxes(session, &boxes, &n_boxes)) != IVL_STATUS_OK) {
        rc = fail("ivl_session_boxes", st);
        goto done;
    }
    for (size_t b = 0; b < n_boxes; b++) {
        printf("box %zu: %s [%.0f, %.0f, %.0f, %.0f] px\n", b, boxes[b].label ? boxes[b].label : "(no label)",
               boxes[b].px1, boxes[b].py1, boxes[b].px2, boxes[b].py2);
    }
    fprintf(stderr, "%u prompt tokens (%u image), %u generated in %zu pieces, first token %.0f ms, total %.0f ms, finish %d\n",
            reply.prompt_tokens, reply.image_tokens, reply.generated_tokens, pieces, reply.time_to_first_token_ms,
            reply.total_ms, (int)reply.finish);
    rc = 0;

done:
    free(image);
    ivl_session_free(session);
    ivl_model_free(model);
    return rc;
}
