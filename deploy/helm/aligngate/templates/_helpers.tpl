{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "aligngate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: "<release>-aligngate" unless the release name already contains the chart name. */}}
{{- define "aligngate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aligngate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; `part-of` marks what the ServiceMonitor scrapes (gateway and vLLM Services). */}}
{{- define "aligngate.labels" -}}
helm.sh/chart: {{ include "aligngate.chart" . }}
app.kubernetes.io/name: {{ include "aligngate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aligngate
{{- end -}}

{{- define "aligngate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aligngate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Name of one vLLM server's objects: "<fullname>-vllm-<key>" (key: backend, rewriter, aligner, helpers). */}}
{{- define "aligngate.vllmName" -}}
{{- printf "%s-vllm-%s" (include "aligngate.fullname" .root) .key | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret with the gateway's and vLLM's keys: the chart's own, or secrets.existingSecret. */}}
{{- define "aligngate.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "aligngate.fullname" .) -}}
{{- end -}}

{{/* The bundled Postgres (charts/postgresql) names its Service and Secret "<release>-postgresql". */}}
{{/* Labels of the Redis objects: not part-of aligngate, so the ServiceMonitor leaves its Service alone. */}}
{{- define "aligngate.redisSelectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "aligngate.redisLabels" -}}
helm.sh/chart: {{ include "aligngate.chart" . }}
{{ include "aligngate.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aligngate.redisName" -}}
{{- printf "%s-redis" (include "aligngate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aligngate.postgresqlName" -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aligngate.postgresqlSecretName" -}}
{{- .Values.postgresql.auth.existingSecret | default (include "aligngate.postgresqlName" .) -}}
{{- end -}}

{{- define "aligngate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "aligngate.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The vLLM servers this release runs: backend (if enabled) and the helpers of helpers.mode. */}}
{{- define "aligngate.vllmServers" -}}
{{- $servers := list -}}
{{- if .Values.vllm.backend.enabled -}}{{- $servers = append $servers "backend" -}}{{- end -}}
{{- if eq .Values.helpers.mode "published" -}}{{- $servers = concat $servers (list "rewriter" "aligner") -}}{{- end -}}
{{- if eq .Values.helpers.mode "lora" -}}{{- $servers = append $servers "helpers" -}}{{- end -}}
{{- join "," $servers -}}
{{- end -}}

{{/*
The gateway's config file (YAML), generated from the values: server address, the backend and helpers served by
this release's vLLM Deployments, experiment and store; then `config` from the values merged over it (a list such
as `backends` given there replaces the generated one). Secrets never appear here: they reach the gateway as
ALIGNGATE_* environment variables from the Secret.
*/}}
{{- define "aligngate.config" -}}
{{- $root := . -}}
{{- $vllmKey := ternary "VLLM_API_KEY" "" (ne (include "aligngate.vllmKeyEnabled" .) "") -}}
{{- $generated := dict "server" (dict "host" "0.0.0.0" "port" 8000) "store" (dict "spill_path" "/var/lib/aligngate/spill/aligngate.spill") -}}
{{- if .Values.vllm.backend.enabled -}}
{{- $backend := dict "name" .Values.vllm.backend.servedModelName "urls" (list (printf "http://%s:8000/v1" (include "aligngate.vllmName" (dict "root" $root "key" "backend")))) -}}
{{- if $vllmKey -}}{{- $_ := set $backend "api_key_env" $vllmKey -}}{{- end -}}
{{- $_ := set $generated "backends" (list (mergeOverwrite $backend (deepCopy .Values.vllm.backend.gateway))) -}}
{{- end -}}
{{- if ne .Values.helpers.mode "none" -}}
{{- $helpers := dict -}}
{{- range $name := list "rewriter" "aligner" -}}
{{- $h := deepCopy (index $root.Values.helpers $name) -}}
{{- if eq $root.Values.helpers.mode "published" -}}
{{- $_ := set $h "url" (printf "http://%s:8000/v1" (include "aligngate.vllmName" (dict "root" $root "key" $name))) -}}
{{- $_ := set $h "model" (index $root.Values.vllm $name).servedModelName -}}
{{- else -}}
{{- $_ := set $h "url" (printf "http://%s:8000/v1" (include "aligngate.vllmName" (dict "root" $root "key" "helpers"))) -}}
{{- $_ := set $h "model" $name -}}
{{- end -}}
{{- if $vllmKey -}}{{- $_ := set $h "api_key_env" $vllmKey -}}{{- end -}}
{{- $_ := set $helpers $name $h -}}
{{- end -}}
{{- $_ := set $generated "helpers" $helpers -}}
{{- end -}}
{{- $arms := .Values.config.experiment.arms | default dict -}}
{{- if not $arms -}}
{{- if ne .Values.helpers.mode "none" -}}
{{- $arms = dict "control" 1 "rewrite" 1 "align" 1 "rewrite+align" 1 -}}
{{- else -}}
{{- $arms = dict "control" 1 -}}
{{- end -}}
{{- $_ := set $generated "experiment" (dict "arms" $arms) -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $generated.server "rate_limits" (dict "backend" (printf "redis://%s:6379/0" (include "aligngate.redisName" .))) -}}
{{- end -}}
{{- $config := mergeOverwrite $generated (deepCopy .Values.config) -}}
{{- if not $config.experiment.arms -}}{{- $_ := set $config.experiment "arms" $arms -}}{{- end -}}
{{- /* Refuse what the gateway would refuse at start (check_servable): an arm whose helper is missing. */ -}}
{{- $helpers := $config.helpers | default dict -}}
{{- range $arm, $weight := $config.experiment.arms -}}
{{- if gt (float64 $weight) 0.0 -}}
{{- if and (has $arm (list "rewrite" "rewrite+align")) (not $helpers.rewriter) -}}
{{- fail (printf "experiment arm %q needs a rewriter: set helpers.mode (published or lora), add config.helpers.rewriter, or give the arm weight 0" $arm) -}}
{{- end -}}
{{- if and (has $arm (list "align" "rewrite+align")) (not $helpers.aligner) -}}
{{- fail (printf "experiment arm %q needs an aligner: set helpers.mode (published or lora), add config.helpers.aligner, or give the arm weight 0" $arm) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Non-empty when the vLLM servers require an API key (a key is set, generated, or in existingSecret). */}}
{{- define "aligngate.vllmKeyEnabled" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.generateVllmApiKey .Values.secrets.vllmApiKey -}}true{{- end -}}
{{- end -}}

{{/* Where the gateway's store URL comes from: "bundled", "external-secret", "external-url" or "config". */}}
{{- define "aligngate.storeSource" -}}
{{- if .Values.postgresql.enabled -}}bundled
{{- else if .Values.externalDatabase.existingSecret -}}external-secret
{{- else if .Values.externalDatabase.url -}}external-url
{{- else if and .Values.config.store .Values.config.store.url -}}config
{{- else -}}
{{- fail "no shared store: enable postgresql (postgresql.enabled=true), or set externalDatabase.url or externalDatabase.existingSecret (several gateway replicas cannot share the default SQLite file)" -}}
{{- end -}}
{{- end -}}
