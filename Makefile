# evfl developer entry points. `make demo` is the main job, `make test` the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
RUN := runs/main

.PHONY: setup demo train test bench lint clean proto proto-check

setup: $(STAMP)

# One pip call for every extra: pip must settle protobuf for ortools and grpcio-tools together.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[agent,fog,coordinator,dev]"
	touch $(STAMP)

# Main job: the whole system end to end on embedded brokers (evfl demo --help for options).
demo: setup
	$(BIN)/evfl demo

# Central training runs on the shipped data (the per-exit results tables in the README).
train: setup
	$(BIN)/evfl data summary
	$(BIN)/evfl model train --dataset dundee --target energy --out $(RUN)/dundee-energy
	$(BIN)/evfl model export --model $(RUN)/dundee-energy --out $(RUN)/dundee-energy/export \
		--quantize float16 --quantize int8
	$(BIN)/evfl model train --dataset dundee --target occupancy --out $(RUN)/dundee-occupancy
	$(BIN)/evfl model export --model $(RUN)/dundee-occupancy --out $(RUN)/dundee-occupancy/export
	$(BIN)/evfl model train --dataset perth --target occupancy --out $(RUN)/perth-occupancy

# Python code generated from proto/*.proto; committed, and CI fails when it is stale.
PROTOC = $(BIN)/python -m grpc_tools.protoc -I.
PROTO_SRC := $(wildcard proto/*.proto)
GEN_TMP := .proto-check

proto: setup
	$(PROTOC) --python_out=. --pyi_out=. $(PROTO_SRC)
	$(PROTOC) --grpc_python_out=. proto/station.proto proto/agent.proto

proto-check: setup
	rm -rf $(GEN_TMP) && mkdir -p $(GEN_TMP)
	$(PROTOC) --python_out=$(GEN_TMP) --pyi_out=$(GEN_TMP) $(PROTO_SRC)
	$(PROTOC) --grpc_python_out=$(GEN_TMP) proto/station.proto proto/agent.proto
	for f in $(GEN_TMP)/proto/*; do \
		cmp -s "$$f" "proto/$$(basename $$f)" || { echo "stale: proto/$$(basename $$f) (run make proto)"; exit 1; }; \
	done
	test "$$(ls proto/*_pb2*.py* | wc -l)" = "$$(ls $(GEN_TMP)/proto | wc -l)" || { echo "stray generated files in proto/"; exit 1; }
	rm -rf $(GEN_TMP)
	@echo "generated code in proto/ is up to date"

test: setup
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python -m bench.edge_inference
	$(BIN)/python -m bench.fog_service
	$(BIN)/python -m bench.round
	$(BIN)/python -m bench.agent
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.aggregate
	$(BIN)/python -m bench.comm

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
