# Command-line tests (label "unit"): the lora binary on small generated models.
add_executable(make_tiny_model ${CMAKE_CURRENT_LIST_DIR}/make_tiny_model.c)
target_include_directories(make_tiny_model PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(make_tiny_model PRIVATE lorac)
add_test(NAME cli_inspect
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_inspect.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> ${CMAKE_CURRENT_BINARY_DIR}/cli_inspect)
set_tests_properties(cli_inspect PROPERTIES LABELS unit)
include(${CMAKE_CURRENT_LIST_DIR}/generate.cmake OPTIONAL)
include(${CMAKE_CURRENT_LIST_DIR}/eval.cmake OPTIONAL)
include(${CMAKE_CURRENT_LIST_DIR}/inspect_adapter.cmake OPTIONAL)
include(${CMAKE_CURRENT_LIST_DIR}/bench.cmake OPTIONAL)
