//! Empty: the work is done by build.rs (a CUDA toolkit check that runs before ggml's CMake build fails).
