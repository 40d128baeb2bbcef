# Metric cross-checks against independent implementations: `lora score` BLEU and NIST against
# NLTK's corpus_bleu / corpus_nist (Debian python3-nltk, run by /usr/bin/python3). Skipped, exit
# 77, where NLTK is not installed.
add_test(NAME metrics_nltk
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_nltk.sh $<TARGET_FILE:lora>
                 ${CMAKE_CURRENT_BINARY_DIR}/tmp/metrics_nltk)
set_tests_properties(metrics_nltk PROPERTIES LABELS unit SKIP_RETURN_CODE 77)
