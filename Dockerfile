# poller in a container: `poller run` as a non-root user (uid 10001), with the config and the
# state as volumes. Build and run: README.md, "Running in a container".
#
#   docker build -t poller .
#   docker run -d --name poller -v /srv/poller/config:/etc/poller:ro \
#     -v /srv/poller/secrets:/run/secrets:ro -v poller-state:/var/lib/poller poller

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
# What the wheel is built from. poller/share/ links to the example config and the unit, so
# the files they point at come too.
COPY pyproject.toml README.md LICENSE config.example.yaml ./
COPY systemd/poller.service systemd/
COPY poller/ poller/
# poller's wheel and every dependency's, so that the final stage installs without a compiler
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 poller \
 && useradd --system --uid 10001 --gid poller --home-dir /var/lib/poller --no-create-home \
      --shell /usr/sbin/nologin poller \
 && install -d -o poller -g poller -m 0700 /var/lib/poller \
 && install -d -m 0755 /etc/poller
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/poller \
 && /opt/poller/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels poller \
 && rm -rf /tmp/wheels
# POLLER_CONFIG: the config in its volume. CREDENTIALS_DIRECTORY: where the starter config
# (`poller init`) reads its secret files, as Docker and Compose mount secrets.
ENV PATH=/opt/poller/bin:$PATH \
    POLLER_CONFIG=/etc/poller/config.yaml \
    CREDENTIALS_DIRECTORY=/run/secrets \
    PYTHONUNBUFFERED=1
# the config (mount it read-only) and the SQLite database, `database: sqlite:////var/lib/poller/poller.db`
VOLUME ["/etc/poller", "/var/lib/poller"]
USER 10001:10001
WORKDIR /var/lib/poller
# SIGTERM stops the daemon gracefully; `docker kill --signal HUP` reloads the config
STOPSIGNAL SIGTERM
ENTRYPOINT ["poller"]
CMD ["run"]
