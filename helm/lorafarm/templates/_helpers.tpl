{{/* Names, labels and the pieces every Ray container shares. */}}

{{- define "lorafarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<name>`, or the release name alone when it already contains the chart name.
     Capped at 40 characters: KubeRay derives pod and Service names from the RayCluster name. */}}
{{- define "lorafarm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lorafarm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lorafarm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lorafarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorafarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selects the head pod of this release's RayCluster (labels KubeRay puts on its pods). */}}
{{- define "lorafarm.headSelector" -}}
ray.io/cluster: {{ include "lorafarm.fullname" . }}
ray.io/node-type: head
{{- end -}}

{{- define "lorafarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lorafarm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Ray token (key `auth_token`, KubeRay's convention). */}}
{{- define "lorafarm.authSecretName" -}}
{{- default (printf "%s-ray-token" (include "lorafarm.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{/* The Secret holding S3 credentials, or "" when pods use their own identity. */}}
{{- define "lorafarm.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}
{{- .Values.s3.existingSecret -}}
{{- else if .Values.s3.accessKeyId -}}
{{- printf "%s-s3" (include "lorafarm.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The tenants volume: the Secret (tenants.existingSecret) or the ConfigMap. */}}
{{- define "lorafarm.tenantsVolume" -}}
{{- if .Values.tenants.existingSecret -}}
secret:
  secretName: {{ .Values.tenants.existingSecret }}
  items:
    - key: tenants.yaml
      path: tenants.yaml
{{- else -}}
configMap:
  name: {{ include "lorafarm.tenantsConfigMapName" . }}
{{- end -}}
{{- end -}}

{{- define "lorafarm.tenantsConfigMapName" -}}
{{- default (printf "%s-tenants" (include "lorafarm.fullname" .)) .Values.tenants.existingConfigMap -}}
{{- end -}}

{{/* Image of a container: (dict "root" $ "group" $group) — the group's override, else the CPU
     or CUDA tag of .Values.image by the group's GPU count. */}}
{{- define "lorafarm.image" -}}
{{- $root := .root -}}
{{- $group := .group | default dict -}}
{{- $override := $group.image | default dict -}}
{{- $repo := $override.repository | default $root.Values.image.repository -}}
{{- $tag := "" -}}
{{- if gt (int ($group.gpus | default 0)) 0 -}}
{{- $tag = $root.Values.image.gpuTag | default (printf "%s-gpu" $root.Chart.AppVersion) -}}
{{- else -}}
{{- $tag = $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- end -}}
{{- printf "%s:%s" $repo ($override.tag | default $tag) -}}
{{- end -}}

{{/* Environment shared by every Ray container: the store, S3 credentials, Ray token auth.
     Token auth is set here explicitly as well as through `authOptions`: KubeRay only injects it
     into the Ray container, not into our sidecar, and an operator older than 1.5.1 drops
     `authOptions` silently — with these variables the cluster still refuses unauthenticated calls. */}}
{{- define "lorafarm.env" -}}
- name: LORAFARM_STORE
  value: {{ .Values.store.uri | quote }}
{{- $s3 := include "lorafarm.s3SecretName" . }}
{{- if $s3 }}
{{- $keys := .Values.s3.existingSecretKeys }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ ternary $keys.accessKeyId "AWS_ACCESS_KEY_ID" (not (empty .Values.s3.existingSecret)) }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ ternary $keys.secretAccessKey "AWS_SECRET_ACCESS_KEY" (not (empty .Values.s3.existingSecret)) }}
{{- if .Values.s3.existingSecret }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ $keys.sessionToken }}
      optional: true
{{- end }}
{{- end }}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "lorafarm.authSecretName" . }}
      key: auth_token
{{- else }}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the head and worker pods: (dict "root" $ "spec" $groupValues). */}}
{{- define "lorafarm.podCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "lorafarm.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Fail at render time with the fix, for rules values.schema.json cannot express. */}}
{{- define "lorafarm.validate" -}}
{{- $names := dict -}}
{{- range $i, $g := .Values.ray.workerGroups -}}
{{- if hasKey $names $g.name -}}
{{- fail (printf "ray.workerGroups[%d].name: %q is used twice — give every worker group its own name" $i $g.name) -}}
{{- end -}}
{{- $_ := set $names $g.name true -}}
{{- $replicas := int (default 0 $g.replicas) -}}
{{- $min := int (default 0 $g.minReplicas) -}}
{{- $max := int (default $replicas $g.maxReplicas) -}}
{{- if or (lt $replicas $min) (gt $replicas $max) -}}
{{- fail (printf "ray.workerGroups[%d] (%s): replicas %d is outside minReplicas..maxReplicas = %d..%d — set replicas between them" $i $g.name $replicas $min $max) -}}
{{- end -}}
{{- if and (eq (default "" $g.type) "gpu") (lt (int (default 0 $g.gpus)) 1) -}}
{{- fail (printf "ray.workerGroups[%d] (%s): type is gpu but gpus is %d — set gpus >= 1, or type: cpu" $i $g.name (int (default 0 $g.gpus))) -}}
{{- end -}}
{{- if and (eq (default "" $g.type) "cpu") (gt (int (default 0 $g.gpus)) 0) -}}
{{- fail (printf "ray.workerGroups[%d] (%s): type is cpu but gpus is %d — set type: gpu, or gpus: 0" $i $g.name (int $g.gpus)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.s3.existingSecret .Values.s3.accessKeyId -}}
{{- fail "s3: set either existingSecret or accessKeyId/secretAccessKey, not both — the chart would ignore the keys" -}}
{{- end -}}
{{- if and .Values.s3.accessKeyId (not .Values.s3.secretAccessKey) -}}
{{- fail "s3.secretAccessKey: empty while s3.accessKeyId is set — set both, or use s3.existingSecret" -}}
{{- end -}}
{{- if and (not .Values.ray.auth.enabled) (or .Values.ray.auth.existingSecret .Values.ray.auth.token) -}}
{{- fail "ray.auth: existingSecret/token are set but ray.auth.enabled is false — remove them, or set enabled: true" -}}
{{- end -}}
{{- if and .Values.ingress.api.enabled (not (and .Values.scheduler.enabled .Values.scheduler.api.enabled)) -}}
{{- fail "ingress.api.enabled: true but the API is off — set scheduler.enabled and scheduler.api.enabled: true" -}}
{{- end -}}
{{- if and .Values.ingress.api.enabled (not .Values.ingress.api.host) -}}
{{- fail "ingress.api.host: empty while ingress.api.enabled is true — set the host name tenants reach the API at" -}}
{{- end -}}
{{- if and .Values.scheduler.api.enabled (eq (int .Values.scheduler.api.port) (int .Values.scheduler.metricsPort)) -}}
{{- fail "scheduler.api.port: the same as scheduler.metricsPort — give the API its own port" -}}
{{- end -}}
{{- if and .Values.ray.auth.existingSecret .Values.ray.auth.token -}}
{{- fail "ray.auth: set either existingSecret or token, not both — the token would be ignored" -}}
{{- end -}}
{{- end -}}
