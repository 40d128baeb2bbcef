# The AdaLoRA oracle (label "oracle"): make_adalora_cases.py writes a PyTorch reference of
# AdaLoRA's forward, penalty, gradients and rank allocator on tiny random GPT-2s, and
# test_adalora_oracle compares the engine with it; AdaLoRA directories go both ways (a PEFT-
# layout fixture read by the engine, the engine's trained adapter read back as PEFT loads it),
# and the trained adapter folded into a plain LoRA directory is read as PEFT's LoRA would (its
# logits within 1e-5 of the AdaLoRA model's).
# Skipped (77) when PyTorch is missing.
add_executable(test_adalora_oracle ${CMAKE_CURRENT_LIST_DIR}/test_adalora_oracle.c)
target_include_directories(test_adalora_oracle PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_adalora_oracle PRIVATE lorac)
set(LORA_ADALORA_ORACLE_SH
    "if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then \
echo 'SKIP: PyTorch is not importable by /usr/bin/python3'; exit 77; fi; \
rm -rf \"$2\" && /usr/bin/python3 \"$3/make_adalora_cases.py\" --out \"$2\" >/dev/null && \
\"$1\" \"$2\" && /usr/bin/python3 \"$3/make_adalora_cases.py\" \
--check-adapter \"$2/written/ada_tiny_run60\" --model \"$2/models/tiny\" && \
/usr/bin/python3 \"$3/peft_check.py\" check --model \"$2/models/tiny\" \
--adapter \"$2/written/ada_tiny_run60_lora\" --tol 1e-5")
add_test(NAME oracle_adalora
         COMMAND sh -c "${LORA_ADALORA_ORACLE_SH}" sh $<TARGET_FILE:test_adalora_oracle>
                 ${CMAKE_CURRENT_BINARY_DIR}/oracle_adalora ${CMAKE_CURRENT_LIST_DIR})
set_tests_properties(oracle_adalora PROPERTIES LABELS oracle SKIP_RETURN_CODE 77 TIMEOUT 600)
