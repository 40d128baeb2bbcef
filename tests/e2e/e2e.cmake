# End-to-end tests (label "e2e"): the lora binary on tiny models, checked against PyTorch.
add_executable(st_check ${CMAKE_CURRENT_LIST_DIR}/st_check.c)
target_link_libraries(st_check PRIVATE lorac)
add_test(NAME e2e_train
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_train.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:test_peft_oracle> $<TARGET_FILE:st_check>
                 ${CMAKE_CURRENT_BINARY_DIR}/e2e_train)
set_tests_properties(e2e_train PROPERTIES LABELS e2e SKIP_RETURN_CODE 77 TIMEOUT 900)

add_test(NAME e2e_demo
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_demo.sh $<TARGET_FILE:lora>
                 ${CMAKE_CURRENT_BINARY_DIR}/e2e_demo)
set_tests_properties(e2e_demo PROPERTIES LABELS e2e TIMEOUT 600)
