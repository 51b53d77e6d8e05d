{{/* Names: every object of a release starts with its release name (kept short: Job pod names append more). */}}
{{- define "srum.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "srum.labels" -}}
app.kubernetes.io/name: srum
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
srum.dev/experiment: {{ required "experiment.name is required" .Values.experiment.name | quote }}
{{- end -}}

{{- define "srum.tritonHost" -}}
{{- printf "%s-triton-headless.%s.svc.%s" (include "srum.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
The experiment as the pods read it: the values' experiment plus what only the release knows (its namespace
and, with an in-release Triton, the judge endpoint). JSON, because Helm prints floats such as 1e-15, which
YAML 1.1 parsers read back as strings.
*/}}
{{- define "srum.experimentJson" -}}
{{- $exp := deepCopy .Values.experiment -}}
{{- $cluster := dict -}}
{{- if and (hasKey $exp "cluster") $exp.cluster -}}{{- $cluster = $exp.cluster -}}{{- end -}}
{{- if and $cluster.namespace (ne $cluster.namespace .Release.Namespace) -}}
{{- fail (printf "experiment.cluster.namespace is %q but the release is being installed in %q: the driver may only create Jobs in its own namespace. Remove the key or install with --namespace %s" $cluster.namespace .Release.Namespace $cluster.namespace) -}}
{{- end -}}
{{- $_ := set $cluster "namespace" .Release.Namespace -}}
{{- $_ := set $exp "cluster" $cluster -}}
{{- if .Values.triton.enabled -}}
{{- $judge := dict -}}
{{- if and (hasKey $exp "judge") $exp.judge -}}{{- $judge = $exp.judge -}}{{- end -}}
{{- if $judge.url -}}
{{- fail (printf "triton.enabled starts a judge server for this release, but experiment.judge.url is %q: remove one of the two" $judge.url) -}}
{{- end -}}
{{- $_ := set $judge "url" (printf "dns:///%s:8001" (include "srum.tritonHost" .)) -}}
{{- $_ := set $exp "judge" $judge -}}
{{- end -}}
{{- toPrettyJson $exp -}}
{{- end -}}

{{- define "srum.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "srum.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* S3: the credentials file of an existing Secret (key `credentials`), mounted read-only, never as
environment variables; the experiment's endpoint for every boto3 client (srum_jobs.cluster.builders does the
same for the stage pods). */}}
{{- define "srum.s3Env" -}}
{{- $cluster := .Values.experiment.cluster | default dict -}}
{{- with $cluster.s3_secret }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /var/run/secrets/srum/s3/credentials
{{- end }}
{{- $storage := .Values.experiment.storage | default dict -}}
{{- with $storage.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $storage.endpoint_url }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "srum.s3Volume" -}}
{{- $cluster := .Values.experiment.cluster | default dict -}}
{{- with $cluster.s3_secret }}
- name: s3-credentials
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
    items: [{key: credentials, path: credentials}]
{{- end }}
{{- end -}}

{{- define "srum.s3Mount" -}}
{{- $cluster := .Values.experiment.cluster | default dict -}}
{{- if $cluster.s3_secret }}
- {name: s3-credentials, mountPath: /var/run/secrets/srum/s3, readOnly: true}
{{- end }}
{{- end -}}

{{/* checkov suppressions with their reason (tests/test_lint_manifests.py runs checkov on the rendered chart). */}}
{{- define "srum.digestSkip" -}}
{{- if not (contains "@sha256:" .) }}
checkov.io/skip1: CKV_K8S_43=a pinned release tag pulled Always; set the image to name@sha256:DIGEST to pin the bytes
{{- end }}
{{- end -}}
