# `lora bench` on a tiny model (label "unit"), and bench/run end to end on tiny models with the
# PyTorch side (label "e2e"; skipped without PyTorch).
add_test(NAME cli_bench
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_bench.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> ${CMAKE_CURRENT_BINARY_DIR}/cli_bench)
set_tests_properties(cli_bench PROPERTIES LABELS unit)

add_test(NAME bench_run
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_bench_run.sh ${CMAKE_SOURCE_DIR}
                 ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/bench_run)
set_tests_properties(bench_run PROPERTIES LABELS e2e TIMEOUT 600)
