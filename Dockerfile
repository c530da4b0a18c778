# The scoring-only install: cxr-score on CPU with onnxruntime, no PyTorch (about 300 MB instead of several GB).
#   docker build -t cxr-score .
#   docker run --rm -v /data/xrays:/in:ro -v /data/out:/out -v /models:/models:ro cxr-score \
#       /in --out /out/results.csv --model /models/model.onnx
FROM python:3.11-slim
WORKDIR /opt/cxr
COPY pyproject.toml README.md LICENSE ./
COPY cxr ./cxr
RUN pip install --no-cache-dir ".[cpu]" && useradd --create-home cxr
USER cxr
ENTRYPOINT ["cxr-score"]
CMD ["--help"]
