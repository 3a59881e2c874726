// threads: one model shared read-only by several threads, each with its own session (e.g. one per
// camera). Every thread asks its own question about its own frame; the answers are compared with
// the same questions answered one after another on a single thread.
//
//   threads [-j THREADS] [-n MAX_NEW_TOKENS] MODEL.gguf
//
// Exit status 0 when the concurrent answers equal the sequential ones, 3 when they differ.
// Build: c++ -std=c++17 threads.cpp $(pkg-config --cflags --libs internvl) -pthread -o threads
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "internvl.h"

namespace {

// RAII owners of the C handles.
struct ModelFree {
    void operator()(ivl_model *m) const { ivl_model_free(m); }
};
struct SessionFree {
    void operator()(ivl_session *s) const { ivl_session_free(s); }
};
using Model = std::unique_ptr<ivl_model, ModelFree>;
using Session = std::unique_ptr<ivl_session, SessionFree>;

void check(ivl_status st, const char *what) {
    if (st != IVL_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": " + ivl_status_name(st) + ": " + ivl_last_error());
    }
}

// An RGBA frame that differs per camera.
std::vector<uint8_t> frame(int camera, uint32_t w, uint32_t h) {
    std::vector<uint8_t> px(size_t(w) * h * 4);
    for (uint32_t y = 0; y < h; y++) {
        for (uint32_t x = 0; x < w; x++) {
            uint8_t *p = &px[(size_t(y) * w + x) * 4];
            p[0] = uint8_t(x * 3 + camera * 60);
            p[1] = uint8_t(y * 5 + camera * 25);
            p[2] = uint8_t((x ^ y) + camera * 90);
            p[3] = 255;
        }
    }
    return px;
}

// Collects the streamed pieces. The callback must not throw: C++ exceptions may not cross the C API.
int32_t append(const char *piece, size_t len, void *user_data) noexcept {
    try {
        static_cast<std::string *>(user_data)->append(piece, len);
        return 0;
    } catch (...) {
        return 1;  // stop generating
    }
}

// One camera's turn on its own session: the answer's text.
std::string ask(const ivl_model *model, int camera, uint32_t max_new_tokens) {
    ivl_session_params sp = ivl_session_default_params();
    sp.n_ctx = 1024;
    sp.n_threads = 1;
    sp.max_tiles = 1;
    ivl_session *raw = nullptr;
    check(ivl_session_new(model, &sp, &raw), "ivl_session_new");
    Session session(raw);

    const uint32_t w = 96, h = 64;
    std::vector<uint8_t> px = frame(camera, w, h);
    check(ivl_session_add_image_rgb(session.get(), px.data(), w, h, w * 4, IVL_PIXEL_FORMAT_RGBA), "add_image_rgb");
    std::string question = "Camera " + std::to_string(camera) + ": what is in front of the robot?";
    check(ivl_session_prompt(session.get(), question.c_str()), "ivl_session_prompt");

    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = max_new_tokens;
    std::string streamed;
    ivl_reply reply;
    check(ivl_session_generate(session.get(), &gp, append, &streamed, &reply), "ivl_session_generate");
    // The reply text is the streamed answer cleaned as Hugging Face chat() does (trimmed).
    std::string text(reply.text, reply.text_len);
    if (streamed.find(text) == std::string::npos) {
        throw std::runtime_error("camera " + std::to_string(camera) + ": the reply text is not in the streamed pieces");
    }
    return text;
}

}  // namespace

int main(int argc, char **argv) {
    int n_threads = 4;
    uint32_t max_new_tokens = 8;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (std::strcmp(argv[i], "-j") == 0) n_threads = std::atoi(argv[i + 1]);
        else if (std::strcmp(argv[i], "-n") == 0) max_new_tokens = uint32_t(std::atoi(argv[i + 1]));
        else {
            std::fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc || n_threads < 1) {
        std::fprintf(stderr, "usage: threads [-j THREADS] [-n MAX_NEW_TOKENS] MODEL.gguf\n");
        return 2;
    }
    try {
        ivl_model *raw = nullptr;
        check(ivl_model_load(argv[i], nullptr, &raw), "ivl_model_load");
        Model model(raw);

        std::vector<std::string> sequential;
        for (int c = 0; c < n_threads; c++) sequential.push_back(ask(model.get(), c, max_new_tokens));

        std::vector<std::string> concurrent(static_cast<size_t>(n_threads));
        std::vector<std::string> errors(static_cast<size_t>(n_threads));
        std::vector<std::thread> workers;
        for (int c = 0; c < n_threads; c++) {
            workers.emplace_back([&, c] {
                try {
                    concurrent[size_t(c)] = ask(model.get(), c, max_new_tokens);
                } catch (const std::exception &e) {
                    errors[size_t(c)] = e.what();
                }
            });
        }
        for (auto &t : workers) t.join();

        int differ = 0;
        for (int c = 0; c < n_threads; c++) {
            if (!errors[size_t(c)].empty()) throw std::runtime_error(errors[size_t(c)]);
            bool same = sequential[size_t(c)] == concurrent[size_t(c)];
            differ += !same;
            std::printf("camera %d: %s: %s\n", c, same ? "same" : "DIFFERENT", concurrent[size_t(c)].c_str());
            if (!same) std::printf("camera %d: sequential answer: %s\n", c, sequential[size_t(c)].c_str());
        }
        return differ ? 3 : 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "threads: %s\n", e.what());
        return 1;
    }
}
