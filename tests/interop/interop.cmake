# Interop tests against external readers (label "interop").
#
# llama_gguf: `lora export gguf` models and LoRA adapters run in llama.cpp (libllama from npm
# node-llama-cpp@3.22.1, installed into the build tree at test time; its headers come from the
# package's git bundle, never committed) and give our logits at every position, as does an
# AdaLoRA adapter pruned in a short run on the demo's base model (models/default); broken
# exports (a wrong alpha, an untransposed weight) must be detected. Skipped (exit 77) without
# node/npm/git/cc or the registry.
add_executable(gguf_helper ${CMAKE_CURRENT_LIST_DIR}/gguf_helper.c)
target_include_directories(gguf_helper PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(gguf_helper PRIVATE lorac)
add_test(NAME llama_gguf
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_llama.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:gguf_helper> ${CMAKE_CURRENT_BINARY_DIR}/llama_gguf
                 ${CMAKE_SOURCE_DIR}/models/default)
set_tests_properties(llama_gguf PROPERTIES LABELS interop SKIP_RETURN_CODE 77 TIMEOUT 900)
