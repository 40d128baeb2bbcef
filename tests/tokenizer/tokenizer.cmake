# Tokenizer tests beyond the unit tests (tests/unit/test_tokenizer.c, test_bpe_train.c).
#
# tokenizer_gpt2 (label interop): `lora tokenize` against GPT-2's real vocabulary and the
# reference JS encoder, fetched from npm at test time into the build tree. Skipped (exit 77)
# without node/npm or network.
add_test(NAME tokenizer_gpt2
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/check_gpt2.sh $<TARGET_FILE:lora>
                 ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_gpt2)
set_tests_properties(tokenizer_gpt2 PROPERTIES LABELS interop SKIP_RETURN_CODE 77 TIMEOUT 600)

# tokenizer_hf_json (label interop): a tokenizer.json from `lora tokenizer-train`, read by Hugging
# Face's JS tokenizers (npm @huggingface/tokenizers, fetched at test time), gives lora's ids.
add_test(NAME tokenizer_hf_json
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/check_hf_json.sh $<TARGET_FILE:lora>
                 ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_hf_json)
set_tests_properties(tokenizer_hf_json PROPERTIES LABELS interop SKIP_RETURN_CODE 77
                     TIMEOUT 600)

# tokenizer_cli (label e2e): `lora tokenizer-train` then `lora tokenize` on a generated corpus,
# round trip and exit codes. Needs nothing outside the build.
add_test(NAME tokenizer_cli
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/check_cli.sh $<TARGET_FILE:lora>
                 ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_cli)
set_tests_properties(tokenizer_cli PROPERTIES LABELS e2e TIMEOUT 120)
