{{/*
Names, labels and the pieces every workload shares: the three config files, the
coordinator address list, TLS flags and volumes, probes.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "asymcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: <release>-<chart name> (the release name alone
when it already holds the chart name), or fullnameOverride. Cut to 37 characters
so that the longest derived name, <fullname>-worker-prefill, stays within the 52
characters a StatefulSet name may have (its pods' controller-revision-hash label
appends 11).
*/}}
{{- define "asymcache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 37 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "asymcache.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 37 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 37 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "asymcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "asymcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asymcache
{{- end -}}

{{/* Labels every selector of the release starts from. */}}
{{- define "asymcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asymcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "asymcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "asymcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "asymcache.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The headless Service giving each coordinator replica a DNS name. */}}
{{- define "asymcache.coordinatorPeersService" -}}
{{- printf "%s-coordinator-peers" (include "asymcache.fullname" .) -}}
{{- end -}}

{{/*
Every coordinator replica's gRPC address, as a list (members register with each
replica): <fullname>-coordinator-<i>.<peers service>.<ns>.svc.<domain>:<port>.
*/}}
{{- define "asymcache.coordinatorAddresses" -}}
{{- $addresses := list -}}
{{- $fullname := include "asymcache.fullname" . -}}
{{- $peers := include "asymcache.coordinatorPeersService" . -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $addresses = append $addresses (printf "%s-coordinator-%d.%s.%s.svc.%s:%d" $fullname $i $peers $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.coordinator.grpc)) -}}
{{- end -}}
{{- toYaml $addresses -}}
{{- end -}}

{{/*
With model.shape set (a model directory's KV shape), the `model` setting of the
daemon and the coordinator as a YAML mapping of model.name and the shape's
fields; empty otherwise (the setting is then model.name, a built-in shape).
*/}}
{{- define "asymcache.modelSetting" -}}
{{- if .Values.model.shape -}}
{{- toYaml (merge (dict "name" .Values.model.name) .Values.model.shape) -}}
{{- end -}}
{{- end -}}

{{/* coordinator.yaml: the chart's settings, then coordinator.config. */}}
{{- define "asymcache.coordinatorConfig" -}}
{{- $owned := dict
    "listen" (printf "0.0.0.0:%d" (int .Values.ports.coordinator.grpc))
    "metrics-port" (int .Values.ports.coordinator.metrics)
    "model" (ternary (include "asymcache.modelSetting" . | fromYaml) .Values.model.name (not (empty .Values.model.shape))) -}}
{{- toYaml (merge $owned (.Values.coordinator.config | default dict)) -}}
{{- end -}}

{{/* daemon.yaml: the chart's settings, then daemon.config. */}}
{{- define "asymcache.daemonConfig" -}}
{{- $owned := dict
    "listen" (printf "0.0.0.0:%d" (int .Values.ports.daemon.grpc))
    "metrics-port" (int .Values.ports.daemon.metrics)
    "backend" (ternary "cuda" "host" (eq .Values.backend "cuda"))
    "model" (ternary (include "asymcache.modelSetting" . | fromYaml) .Values.model.name (not (empty .Values.model.shape)))
    "policy" .Values.policy
    "coordinators" (include "asymcache.coordinatorAddresses" . | fromYamlArray) -}}
{{- if gt (float64 .Values.pool.fraction) 0.0 -}}
{{- $_ := set $owned "pool-fraction" .Values.pool.fraction -}}
{{- else -}}
{{- $_ := set $owned "pool-bytes" .Values.pool.bytes -}}
{{- end -}}
{{- toYaml (merge $owned (.Values.daemon.config | default dict)) -}}
{{- end -}}

{{/* worker.yaml: the chart's settings, then worker.config. */}}
{{- define "asymcache.workerConfig" -}}
{{- $owned := dict
    "listen" (printf "0.0.0.0:%d" (int .Values.ports.worker.grpc))
    "metrics-port" (int .Values.ports.worker.metrics)
    "daemon" (printf "127.0.0.1:%d" (int .Values.ports.daemon.grpc))
    "backend" .Values.backend
    "model" .Values.model.name
    "seed" (int .Values.model.seed)
    "coordinators" (include "asymcache.coordinatorAddresses" . | fromYamlArray) -}}
{{- if .Values.model.dir -}}
{{- $_ := set $owned "model-dir" .Values.model.dir -}}
{{- end -}}
{{- toYaml (merge $owned (.Values.worker.config | default dict)) -}}
{{- end -}}

{{/* Where the ConfigMap with the three files is mounted. */}}
{{- define "asymcache.configDir" -}}/etc/asymcache/config{{- end -}}

{{/*
The transport flags of every binary: the TLS files, or --plaintext.
*/}}
{{- define "asymcache.transportArgs" -}}
{{- if .Values.tls.enabled -}}
- --tls-cert={{ .Values.tls.mountPath }}/tls.crt
- --tls-key={{ .Values.tls.mountPath }}/tls.key
- --tls-ca={{ .Values.tls.mountPath }}/ca.crt
{{- else -}}
- --plaintext
{{- end -}}
{{- end -}}

{{/*
With TLS, the identities of the cluster's own components (tls.trustedPeers):
the coordinator lets only them register and the workers trust the salt the
coordinator forwards (docs/security.md). Nothing without TLS.
*/}}
{{- define "asymcache.trustedPeersArgs" -}}
{{- if .Values.tls.enabled -}}
- --trusted-peers={{ join "," .Values.tls.trustedPeers }}
{{- end -}}
{{- end -}}

{{/* Volume mounts every container has: config, /tmp, TLS. */}}
{{- define "asymcache.commonMounts" -}}
- name: config
  mountPath: {{ include "asymcache.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes for commonMounts. */}}
{{- define "asymcache.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "asymcache.fullname" . }}-config
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/*
Startup, readiness and liveness probes of a container serving gRPC on .port:
the kubelet's gRPC probe on grpc.health.v1 (service ""), or, with TLS (which
that probe cannot speak), the same check made by `asymcachectl health` (in the
image) over mutual TLS with the pod's own certificate, dialing 127.0.0.1 (a
name the certificate carries already: workers dial their daemon there).
Call with (dict "root" $ "port" N).
*/}}
{{- define "asymcache.probes" -}}
{{- $p := .root.Values.probes -}}
{{- $check := dict "grpc" (dict "port" (int .port) "service" "") -}}
{{- if .root.Values.tls.enabled -}}
{{- $dir := .root.Values.tls.mountPath -}}
{{- $command := list "asymcachectl" "health" (printf "--target=127.0.0.1:%d" (int .port))
      (printf "--timeout=%ds" (int $p.timeoutSeconds)) (printf "--tls-cert=%s/tls.crt" $dir)
      (printf "--tls-key=%s/tls.key" $dir) (printf "--tls-ca=%s/ca.crt" $dir) -}}
{{- $check = dict "exec" (dict "command" $command) -}}
{{- end -}}
startupProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
readinessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
livenessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end -}}

{{/*
Environment every container gets: its pod's name, which the arguments use as
$(POD_NAME) (member ids, advertised addresses).
*/}}
{{- define "asymcache.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/*
Preferred anti-affinity spreading the pods of one component over nodes (the
default affinity). Call with (dict "root" $ "component" NAME).
*/}}
{{- define "asymcache.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "asymcache.selectorLabels" .root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end -}}
