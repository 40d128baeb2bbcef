# The PyTorch oracle (label "oracle"): tests/oracle/make_cases.py writes tiny random GPT-2
# models and reference outputs; test_oracle compares the engine with them.
add_executable(test_oracle ${CMAKE_CURRENT_LIST_DIR}/test_oracle.c)
target_include_directories(test_oracle PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_oracle PRIVATE lorac)
add_test(NAME oracle_gpt2
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_oracle.sh $<TARGET_FILE:test_oracle>
                 ${CMAKE_CURRENT_BINARY_DIR}/oracle_cases)
set_tests_properties(oracle_gpt2 PROPERTIES LABELS oracle SKIP_RETURN_CODE 77 TIMEOUT 600)

add_executable(test_peft_oracle ${CMAKE_CURRENT_LIST_DIR}/test_peft_oracle.c)
target_include_directories(test_peft_oracle PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_peft_oracle PRIVATE lorac)
add_test(NAME oracle_peft
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_peft_oracle.sh $<TARGET_FILE:test_peft_oracle>
                 ${CMAKE_CURRENT_BINARY_DIR}/oracle_peft)
set_tests_properties(oracle_peft PROPERTIES LABELS oracle SKIP_RETURN_CODE 77 TIMEOUT 600)
