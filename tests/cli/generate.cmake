# `lora generate` on a tiny model with a small byte-level tokenizer (label "unit").
add_test(NAME cli_generate
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_generate.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> ${CMAKE_CURRENT_BINARY_DIR}/cli_generate)
set_tests_properties(cli_generate PROPERTIES LABELS unit)
