# Runs one npm real-client test: installs its pinned packages when missing, then runs its script.
# Inputs: NODE, NPM (program paths), DIR (the test's folder), SCRIPT (file in DIR), HAVEN_BINARY.
foreach(var NODE NPM DIR SCRIPT HAVEN_BINARY)
  if(NOT ${var} OR "${${var}}" MATCHES "NOTFOUND$")
    message(FATAL_ERROR "${var} is not set or not found; node and npm come from scripts/install-deps.sh")
  endif()
endforeach()
if(NOT EXISTS "${HAVEN_BINARY}")
  message(FATAL_ERROR "haven binary not built: ${HAVEN_BINARY}")
endif()

if(NOT EXISTS "${DIR}/node_modules")
  message(STATUS "npm ci in ${DIR}")
  execute_process(
    COMMAND "${NPM}" ci --no-audit --no-fund --loglevel=error
    WORKING_DIRECTORY "${DIR}"
    TIMEOUT 180
    RESULT_VARIABLE npm_result)
  if(NOT npm_result EQUAL 0)
    file(REMOVE_RECURSE "${DIR}/node_modules")
    message(FATAL_ERROR "npm ci failed in ${DIR}: ${npm_result}")
  endif()
endif()

execute_process(
  COMMAND ${CMAKE_COMMAND} -E env "HAVEN_BINARY=${HAVEN_BINARY}" "${NODE}" "${DIR}/${SCRIPT}"
  WORKING_DIRECTORY "${DIR}"
  TIMEOUT 120
  RESULT_VARIABLE test_result)
if(NOT test_result EQUAL 0)
  message(FATAL_ERROR "${SCRIPT} failed: ${test_result}")
endif()
