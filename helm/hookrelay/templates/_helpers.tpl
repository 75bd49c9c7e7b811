{{/*
Named templates of the hookrelay chart.

Every template takes the chart's own scope as its context: in this chart that is `.`; in a
parent chart that has hookrelay as a dependency it is `.Subcharts.hookrelay` (or
`.Subcharts.<alias>`), which carries the dependency's coalesced .Values, its .Chart and
.Files, and the .Release. The pod-level templates ("hookrelay.sidecar",
"hookrelay.initContainers", "hookrelay.containers", "hookrelay.volumes",
"hookrelay.volumeClaimTemplates", "hookrelay.podLabels", "hookrelay.podAnnotations") are
the public interface for parent charts; README.md shows how to include them.
*/}}

{{- define "hookrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookrelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hookrelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "hookrelay.labels" -}}
helm.sh/chart: {{ include "hookrelay.chart" . }}
{{ include "hookrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hookrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The label that marks a pod running this release's hookrelay: Service, PodMonitor. */}}
{{- define "hookrelay.instanceLabel" -}}
hookrelay.io/instance: {{ include "hookrelay.fullname" . }}
{{- end }}

{{- define "hookrelay.configMapName" -}}
{{- printf "%s-config" (include "hookrelay.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "hookrelay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Port of a listen address ("0.0.0.0:9464", "[::]:9464"). Context: the address. */}}
{{- define "hookrelay.addressPort" -}}
{{- regexFind "[0-9]+$" (toString .) }}
{{- end }}

{{/* "true" when a listen address is a loopback one. Context: the address. */}}
{{- define "hookrelay.isLoopback" -}}
{{- $host := regexReplaceAll ":[0-9]+$" (toString .) "" | trimPrefix "[" | trimSuffix "]" }}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "::1") }}true{{ end }}
{{- end }}

{{- define "hookrelay.appAddress" -}}
{{- dig "listen" "app" "127.0.0.1:8787" (.Values.config | default dict) }}
{{- end }}
{{- define "hookrelay.apiAddress" -}}
{{- dig "listen" "api" "127.0.0.1:8788" (.Values.config | default dict) }}
{{- end }}
{{- define "hookrelay.opsAddress" -}}
{{- dig "listen" "ops" "0.0.0.0:9464" (.Values.config | default dict) }}
{{- end }}
{{- define "hookrelay.appPort" -}}
{{- include "hookrelay.addressPort" (include "hookrelay.appAddress" .) }}
{{- end }}
{{- define "hookrelay.apiPort" -}}
{{- include "hookrelay.addressPort" (include "hookrelay.apiAddress" .) }}
{{- end }}
{{- define "hookrelay.opsPort" -}}
{{- include "hookrelay.addressPort" (include "hookrelay.opsAddress" .) }}
{{- end }}

{{/* The URL the app posts events to. */}}
{{- define "hookrelay.ingestUrl" -}}
{{- printf "http://127.0.0.1:%s" (include "hookrelay.appPort" .) }}
{{- end }}

{{/* The configuration file, as mounted at /etc/hookrelay/config.yaml. */}}
{{- define "hookrelay.configYaml" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if .Values.sharedStore.enabled }}
{{- /* The queue is in PostgreSQL: the file's keys go, the rest of storage stays. */}}
{{- $storage := omit (get $config "storage" | default dict) "path" "memory" "sync" "max_size" "reserve" }}
{{- $pg := merge (dict "url" "${HOOKRELAY_DATABASE_URL}") (deepCopy (.Values.sharedStore.postgres | default dict)) }}
{{- $_ := set $storage "postgres" $pg }}
{{- $_ := set $config "storage" $storage }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Checks that fail rendering with a clear message instead of a relay that refuses to start.
*/}}
{{- define "hookrelay.validate" -}}
{{- $config := .Values.config | default dict }}
{{- $api := include "hookrelay.apiAddress" . }}
{{- $app := include "hookrelay.appAddress" . }}
{{- if and .Values.service.enabled .Values.service.api.enabled (include "hookrelay.isLoopback" $api) }}
{{- fail (printf "service.enabled exposes the management API, but config.listen.api is %s (loopback): set config.listen.api to \"0.0.0.0:%s\" with config.api.token (\"${HOOKRELAY_API_TOKEN}\" from secretEnv), or set service.api.enabled=false" $api (include "hookrelay.apiPort" .)) }}
{{- end }}
{{- if and (not (include "hookrelay.isLoopback" $api)) (not (dig "api" "token" "" $config)) (not (dig "api" "allow_unauthenticated" false $config)) }}
{{- fail (printf "config.listen.api is %s (not loopback): set config.api.token (e.g. \"${HOOKRELAY_API_TOKEN}\" from secretEnv) or config.api.allow_unauthenticated=true" $api) }}
{{- end }}
{{- if and (not (include "hookrelay.isLoopback" $app)) (not (dig "ingest" "token" "" $config)) (not (dig "ingest" "allow_unauthenticated" false $config)) }}
{{- fail (printf "config.listen.app is %s (not loopback): set config.ingest.token or config.ingest.allow_unauthenticated=true" $app) }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "monitoring.serviceMonitor.enabled needs service.enabled=true (or use monitoring.podMonitor)" }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.service.ops.enabled) }}
{{- fail "monitoring.serviceMonitor.enabled needs service.ops.enabled=true" }}
{{- end }}
{{- if and .Values.service.enabled (not .Values.service.api.enabled) (not .Values.service.ops.enabled) }}
{{- fail "service.enabled with neither service.api.enabled nor service.ops.enabled" }}
{{- end }}
{{- if and .Values.sharedStore.enabled .Values.persistence.enabled }}
{{- fail "sharedStore.enabled keeps the queue in PostgreSQL: set persistence.enabled=false (no data volume is needed)" }}
{{- end }}
{{- if and .Values.sharedStore.enabled (not .Values.sharedStore.urlSecret.name) }}
{{- fail "sharedStore.enabled needs sharedStore.urlSecret.name: an existing Secret holding the database URL (postgres://user:password@host:5432/db)" }}
{{- end }}
{{- end }}

{{/*
Pod labels to add to the pod template that runs hookrelay: the Service and the PodMonitor
select pods by them.
*/}}
{{- define "hookrelay.podLabels" -}}
{{ include "hookrelay.instanceLabel" . }}
{{- end }}

{{/*
Pod annotations to add to the pod template: Prometheus scrape annotations
(monitoring.scrapeAnnotations.enabled) and checksum/config (rollOnConfigChange, or
config.reload.watch false). May render nothing.
*/}}
{{- define "hookrelay.podAnnotations" -}}
{{- $annotations := dict }}
{{- if .Values.monitoring.scrapeAnnotations.enabled }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (include "hookrelay.opsPort" .) }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- if or .Values.rollOnConfigChange (eq (toString (dig "reload" "watch" true (.Values.config | default dict))) "false") }}
{{- $_ := set $annotations "checksum/config" (include "hookrelay.configYaml" . | sha256sum) }}
{{- end }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* A probe on the ops port. Context: (list <probes.X values> <path>). */}}
{{- define "hookrelay.probe" -}}
{{- $probe := omit (index . 0) "enabled" }}
{{- $_ := set $probe "httpGet" (dict "path" (index . 1) "port" "hookrelay-ops") }}
{{- toYaml $probe }}
{{- end }}

{{/*
The hookrelay container, as one list item. In native mode (sidecar.mode) it carries
restartPolicy: Always and belongs in initContainers; in container mode it belongs in
containers. "hookrelay.initContainers" and "hookrelay.containers" place it for you.
*/}}
{{- define "hookrelay.sidecar" -}}
- name: {{ .Values.sidecar.name }}
  image: {{ include "hookrelay.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.sidecar.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/hookrelay/config.yaml"]
  workingDir: /var/lib/hookrelay
  ports:
    - name: hookrelay-app
      containerPort: {{ include "hookrelay.appPort" . }}
      protocol: TCP
    - name: hookrelay-api
      containerPort: {{ include "hookrelay.apiPort" . }}
      protocol: TCP
    - name: hookrelay-ops
      containerPort: {{ include "hookrelay.opsPort" . }}
      protocol: TCP
  {{- if or .Values.secretEnv .Values.env .Values.sharedStore.enabled }}
  env:
    {{- if .Values.sharedStore.enabled }}
    - name: HOOKRELAY_DATABASE_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.sharedStore.urlSecret.name }}
          key: {{ .Values.sharedStore.urlSecret.key }}
    {{- end }}
    {{- range .Values.secretEnv }}
    - name: {{ .name }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
          {{- if .optional }}
          optional: true
          {{- end }}
    {{- end }}
    {{- with .Values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if .Values.probes.startup.enabled }}
  startupProbe:
    {{- include "hookrelay.probe" (list .Values.probes.startup "/readyz") | nindent 4 }}
  {{- end }}
  {{- if .Values.probes.liveness.enabled }}
  livenessProbe:
    {{- include "hookrelay.probe" (list .Values.probes.liveness "/healthz") | nindent 4 }}
  {{- end }}
  {{- if .Values.probes.readiness.enabled }}
  readinessProbe:
    {{- include "hookrelay.probe" (list .Values.probes.readiness "/readyz") | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: hookrelay-config
      mountPath: /etc/hookrelay
      readOnly: true
    {{- if not .Values.sharedStore.enabled }}
    - name: hookrelay-data
      mountPath: /var/lib/hookrelay
    {{- end }}
    - name: hookrelay-tmp
      mountPath: /tmp
{{- end }}

{{/* The hookrelay container for initContainers: renders only in native mode. */}}
{{- define "hookrelay.initContainers" -}}
{{- if eq .Values.sidecar.mode "native" }}
{{- include "hookrelay.sidecar" . }}
{{- end }}
{{- end }}

{{/* The hookrelay container for containers: renders only in container mode. */}}
{{- define "hookrelay.containers" -}}
{{- if eq .Values.sidecar.mode "container" }}
{{- include "hookrelay.sidecar" . }}
{{- end }}
{{- end }}

{{/*
The pod volumes hookrelay mounts: its ConfigMap (as a directory), /tmp, and the data volume
as an emptyDir unless persistence.enabled (then the StatefulSet's volumeClaimTemplates,
"hookrelay.volumeClaimTemplates", provide it) or sharedStore.enabled (no data volume).
*/}}
{{- define "hookrelay.volumes" -}}
- name: hookrelay-config
  configMap:
    name: {{ include "hookrelay.configMapName" . }}
- name: hookrelay-tmp
  emptyDir:
    {{- toYaml .Values.tmpVolume | nindent 4 }}
{{- if not (or .Values.persistence.enabled .Values.sharedStore.enabled) }}
- name: hookrelay-data
  emptyDir:
    {{- toYaml (.Values.persistence.emptyDir | default dict) | nindent 4 }}
{{- end }}
{{- end }}

{{/* The data volume's claim template (persistence.enabled): one PVC per pod. */}}
{{- define "hookrelay.volumeClaimTemplates" -}}
{{- if .Values.persistence.enabled -}}
- metadata:
    name: hookrelay-data
    labels:
      {{- include "hookrelay.selectorLabels" . | nindent 6 }}
    {{- with .Values.persistence.annotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    accessModes:
      {{- toYaml .Values.persistence.accessModes | nindent 6 }}
    {{- if .Values.persistence.storageClass }}
    storageClassName: {{ .Values.persistence.storageClass | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ .Values.persistence.size | quote }}
{{- end }}
{{- end }}
