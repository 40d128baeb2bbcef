# `lora eval` (label "unit"): a tiny model with a byte-level tokenizer scored on small JSONL files.
add_test(NAME cli_eval
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_eval.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> ${CMAKE_CURRENT_BINARY_DIR}/cli_eval)
set_tests_properties(cli_eval PROPERTIES LABELS unit)
