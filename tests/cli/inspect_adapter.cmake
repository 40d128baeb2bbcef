# `lora inspect ADAPTER_DIR` and `lora export lora` (label "unit"): adapters written by short
# LoRA and AdaLoRA runs on a tiny model; the printed ranks against the rank_pattern.
add_test(NAME cli_inspect_adapter
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_inspect_adapter.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> ${CMAKE_CURRENT_BINARY_DIR}/cli_inspect_adapter)
set_tests_properties(cli_inspect_adapter PROPERTIES LABELS unit)
