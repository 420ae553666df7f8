"""C++ CPU kernels, loaded into MindSpore as "aot" Custom ops (see ``src.kernels.build``)."""
