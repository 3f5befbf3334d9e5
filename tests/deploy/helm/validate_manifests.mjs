// Validates rendered Kubernetes manifests (the output of `helm template`) the way
// an API server with strict field validation (kubectl's default) would, as far as
// that can be done without a cluster:
//
//   1. schema: every document is validated against its kind's OpenAPI schema
//      (the npm package kubernetes-models, and @kubernetes-models/prometheus-operator
//      for ServiceMonitor): types, enums, formats, required fields. A kind
//      neither package knows is an error.
//   2. unknown fields: the schemas above accept fields they do not list, the API
//      server does not; every field is checked against the model's type
//      declarations (the packages' .d.ts files).
//   3. rules the API server checks beyond the schema (names, label syntax,
//      port names, volume mounts, selectors matching their template) and
//      references between the rendered objects (Service selectors and named
//      target ports, PodDisruptionBudget and ServiceMonitor selectors,
//      StatefulSet serviceName, ConfigMap / ServiceAccount / ResourceClaimTemplate
//      references, $(VAR) references in container arguments).
//
// Usage: node validate_manifests.mjs [--dump-json OUT.json] RENDERED.yaml...
//        node validate_manifests.mjs --each RENDERED.yaml...   (each file a render of its own)
// Must sit beside the node_modules holding its packages (tests/deploy/helm/
// fetch_tools.sh installs them and chart_test.sh copies this file there).
// Prints one line per problem, "<file> #<doc> <Kind>/<name>: <path>: <message>".
// Exit status: 0 valid, 1 problems found, 2 bad usage or unreadable input.

import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const nodeModules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");

// ---------------------------------------------------------------------------
// Which package models an apiVersion.

// The import specifier of the model class of (apiVersion, kind).
function modelSpecifier(apiVersion, kind) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

// The .d.ts file declaring the model class's interface I<kind>.
function modelDeclarationFile(apiVersion, kind) {
  return join(nodeModules, `${modelSpecifier(apiVersion, kind)}.d.ts`);
}

// ---------------------------------------------------------------------------
// Type declarations (.d.ts) of the models, for the unknown-field check.
//
// The packages' declarations are generated and regular: imports, interfaces
// whose members are `"name"?: TYPE;` or `[key: string]: TYPE;`, type aliases,
// `export type { A as B }` re-exports, and classes (skipped). TYPE is built
// from names, string/number literals, Array<T>, T[], { members }, unions and
// intersections. Anything else is a parse error (the test fails, loudly).

function tokenize(text) {
  const stripped = text.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/[^\n]*/g, " ");
  const tokens = [];
  const re = /\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([A-Za-z_$][\w$]*)|(\d+(?:\.\d+)?)|(\S))/gy;
  let m;
  while ((m = re.exec(stripped)) !== null) {
    if (m[1] !== undefined) tokens.push({ t: "str", v: m[1].slice(1, -1) });
    else if (m[2] !== undefined) tokens.push({ t: "id", v: m[2] });
    else if (m[3] !== undefined) tokens.push({ t: "num", v: m[3] });
    else if (m[4] !== undefined) tokens.push({ t: "p", v: m[4] });
    if (re.lastIndex >= stripped.length) break;
  }
  return tokens;
}

class DeclarationParser {
  constructor(tokens, file) {
    this.tokens = tokens;
    this.pos = 0;
    this.file = file;
  }
  peek(offset = 0) { return this.tokens[this.pos + offset]; }
  next() { return this.tokens[this.pos++]; }
  is(v, offset = 0) { const t = this.peek(offset); return t !== undefined && t.v === v && t.t !== "str"; }
  expect(v) {
    const t = this.next();
    if (!t || t.v !== v) throw new Error(`${this.file}: expected '${v}', got '${t ? t.v : "end"}'`);
    return t;
  }
  skipBalanced(open, close) {
    let depth = 0;
    do {
      const t = this.next();
      if (!t) throw new Error(`${this.file}: unbalanced '${open}'`);
      if (t.t === "p" && t.v === open) depth++;
      if (t.t === "p" && t.v === close) depth--;
    } while (depth > 0);
  }
  skipStatement() {
    while (this.pos < this.tokens.length && !this.is(";")) {
      if (this.is("{")) this.skipBalanced("{", "}");
      else if (this.is("(")) this.skipBalanced("(", ")");
      else this.next();
    }
    if (this.is(";")) this.next();
  }

  // The whole file: { imports, interfaces, aliases }.
  parseFile() {
    const decl = { imports: {}, interfaces: {}, aliases: {} };
    while (this.pos < this.tokens.length) {
      if (this.is("import")) { this.parseImport(decl); continue; }
      if (this.is("export")) this.next();
      if (this.is("interface")) { this.parseInterface(decl); continue; }
      if (this.is("type") && this.is("{", 1)) { this.parseTypeExport(decl); continue; }
      if (this.is("type")) {
        this.next();
        const name = this.next().v;
        this.expect("=");
        decl.aliases[name] = this.parseType();
        if (this.is(";")) this.next();
        continue;
      }
      if (this.is("declare") && this.is("class", 1)) {
        while (!this.is("{")) this.next();
        this.skipBalanced("{", "}");
        continue;
      }
      this.skipStatement();
    }
    return decl;
  }
  parseImport(decl) {
    this.expect("import");
    if (!this.is("{")) { this.skipStatement(); return; }
    this.next();
    const names = [];
    while (!this.is("}")) {
      const imported = this.next().v;
      let local = imported;
      if (this.is("as")) { this.next(); local = this.next().v; }
      names.push([imported, local]);
      if (this.is(",")) this.next();
    }
    this.expect("}");
    this.expect("from");
    const from = this.next().v;
    for (const [imported, local] of names) decl.imports[local] = { from, name: imported };
    if (this.is(";")) this.next();
  }
  parseTypeExport(decl) {
    this.expect("type");
    this.expect("{");
    while (!this.is("}")) {
      const original = this.next().v;
      let exported = original;
      if (this.is("as")) { this.next(); exported = this.next().v; }
      if (exported !== original) decl.aliases[exported] = { k: "ref", name: original };
      if (this.is(",")) this.next();
    }
    this.expect("}");
    if (this.is(";")) this.next();
  }
  parseInterface(decl) {
    this.expect("interface");
    const name = this.next().v;
    const base = [];
    if (this.is("<")) this.skipBalanced("<", ">");
    if (this.is("extends")) {
      this.next();
      while (!this.is("{")) {
        const t = this.next();
        if (t.t === "id") base.push(t.v);
        if (this.is("<")) this.skipBalanced("<", ">");
      }
    }
    const body = this.parseObjectType();
    decl.interfaces[name] = { ...body, base };
  }
  // { "name"?: TYPE; [key: string]: TYPE; } -> { k: "object", props, index }
  parseObjectType() {
    this.expect("{");
    const props = {};
    let index = null;
    while (!this.is("}")) {
      if (this.is("[")) {
        this.next();
        this.next();  // key
        this.expect(":");
        this.next();  // string
        this.expect("]");
        this.expect(":");
        index = this.parseType();
      } else {
        const key = this.next();
        if (key.t !== "str" && key.t !== "id") throw new Error(`${this.file}: bad member '${key.v}'`);
        if (this.is("?")) this.next();
        this.expect(":");
        props[key.v] = this.parseType();
      }
      if (this.is(";") || this.is(",")) this.next();
    }
    this.expect("}");
    return { k: "object", props, index };
  }
  parseType() {
    if (this.is("|")) this.next();
    const branches = [this.parseIntersection()];
    while (this.is("|")) { this.next(); branches.push(this.parseIntersection()); }
    return branches.length === 1 ? branches[0] : { k: "union", of: branches };
  }
  parseIntersection() {
    const parts = [this.parsePostfix()];
    while (this.is("&")) { this.next(); parts.push(this.parsePostfix()); }
    return parts.length === 1 ? parts[0] : { k: "union", of: parts };
  }
  parsePostfix() {
    let type = this.parsePrimary();
    while (this.is("[") && this.is("]", 1)) { this.next(); this.next(); type = { k: "array", of: type }; }
    return type;
  }
  parsePrimary() {
    const t = this.peek();
    if (!t) throw new Error(`${this.file}: type expected at end`);
    if (t.t === "p" && t.v === "{") return this.parseObjectType();
    if (t.t === "p" && t.v === "(") { this.next(); const inner = this.parseType(); this.expect(")"); return inner; }
    if (t.t === "str" || t.t === "num") { this.next(); return { k: "leaf" }; }
    if (t.t === "id") {
      this.next();
      if (t.v === "Array" && this.is("<")) {
        this.next();
        const of = this.parseType();
        this.expect(">");
        return { k: "array", of };
      }
      if (this.is("<")) this.skipBalanced("<", ">");
      if (["string", "number", "boolean", "any", "unknown", "object", "null", "undefined", "true", "false"].includes(t.v)) {
        return { k: "leaf" };
      }
      return { k: "ref", name: t.v };
    }
    throw new Error(`${this.file}: unexpected '${t.v}' in a type`);
  }
}

const declarationCache = new Map();

function declarationsOf(file) {
  if (!declarationCache.has(file)) {
    const parser = new DeclarationParser(tokenize(readFileSync(file, "utf8")), file);
    declarationCache.set(file, parser.parseFile());
  }
  return declarationCache.get(file);
}

// The .d.ts file an import specifier of `fromFile` names; null for the
// packages that only hold base classes (@kubernetes-models/base).
function importedFile(fromFile, specifier) {
  if (specifier.startsWith(".")) return join(dirname(fromFile), specifier.replace(/\.js$/, "") + ".d.ts");
  if (specifier === "@kubernetes-models/base") return null;
  const file = join(nodeModules, specifier + ".d.ts");
  if (!existsSync(file)) throw new Error(`${fromFile}: cannot find the declarations of '${specifier}'`);
  return file;
}

// Resolves a named type seen in `file` to a structural type (object, array,
// union or leaf), following aliases and imports.
function resolve(name, file, depth = 0) {
  if (depth > 20) throw new Error(`${file}: alias loop at '${name}'`);
  if (name === "TypeMeta") {
    return { k: "object", props: { apiVersion: { k: "leaf" }, kind: { k: "leaf" } }, index: null };
  }
  const decl = declarationsOf(file);
  const iface = decl.interfaces[name];
  if (iface) {
    const props = { ...iface.props };
    for (const base of iface.base) {
      const resolved = resolve(base, file, depth + 1);
      if (resolved.k === "object") Object.assign(props, resolved.props);
    }
    return { k: "object", props, index: iface.index, file };
  }
  const alias = decl.aliases[name];
  if (alias) return alias.k === "ref" ? resolve(alias.name, file, depth + 1) : { ...alias, file };
  const imported = decl.imports[name];
  if (imported) {
    const target = importedFile(file, imported.from);
    if (target === null) return { k: "leaf" };
    return resolve(imported.name, target, depth + 1);
  }
  throw new Error(`${file}: unknown type '${name}'`);
}

// Pushes "path: unknown field" for every field of `value` that `type` lacks.
function checkFields(value, type, file, path, problems) {
  if (type.k === "ref") type = resolve(type.name, type.file || file);
  const typeFile = type.file || file;
  switch (type.k) {
    case "leaf":
      return;
    case "array":
      if (Array.isArray(value)) value.forEach((v, i) => checkFields(v, type.of, typeFile, `${path}[${i}]`, problems));
      return;
    case "object":
      if (value === null || typeof value !== "object" || Array.isArray(value)) return;
      for (const [key, v] of Object.entries(value)) {
        const fieldType = Object.prototype.hasOwnProperty.call(type.props, key) ? type.props[key] : type.index;
        if (fieldType === null) {
          problems.push(`${path ? path + "." : ""}${key}: unknown field`);
          continue;
        }
        checkFields(v, fieldType, typeFile, `${path ? path + "." : ""}${key}`, problems);
      }
      return;
    case "union": {
      const structural = type.of
        .map((t) => (t.k === "ref" ? resolve(t.name, t.file || typeFile) : t))
        .filter((t) => t.k !== "leaf");
      if (structural.length === 0) return;
      // The value fits the union when one branch finds no unknown field.
      let best = null;
      for (const branch of structural) {
        const found = [];
        checkFields(value, branch, branch.file || typeFile, path, found);
        if (found.length === 0) return;
        if (best === null || found.length < best.length) best = found;
      }
      problems.push(...best);
      return;
    }
    default:
      throw new Error(`internal: type kind ${type.k}`);
  }
}

// ---------------------------------------------------------------------------
// Rules of the API server beyond the schema, and references between objects.

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const IANA_SVC_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);

function checkLabels(labels, path, problems) {
  for (const [key, value] of Object.entries(labels || {})) {
    const slash = key.lastIndexOf("/");
    const prefix = slash >= 0 ? key.slice(0, slash) : null;
    const name = slash >= 0 ? key.slice(slash + 1) : key;
    if (prefix !== null && (prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) {
      problems.push(`${path}.${key}: label key prefix is not a DNS subdomain`);
    }
    if (name.length > 63 || !LABEL_NAME.test(name)) problems.push(`${path}.${key}: bad label key`);
    if (typeof value !== "string") problems.push(`${path}.${key}: label value must be a string`);
    else if (value.length > 63 || !LABEL_VALUE.test(value)) problems.push(`${path}.${key}: bad label value '${value}'`);
  }
}

function selects(selector, labels) {
  return Object.entries(selector || {}).every(([k, v]) => (labels || {})[k] === v);
}

// The pod template (and its path) of a workload document, or null.
function podTemplateOf(doc) {
  if (!WORKLOAD_KINDS.has(doc.kind)) return null;
  return doc.spec && doc.spec.template ? doc.spec.template : null;
}

function allContainers(podSpec) {
  return [...(podSpec.initContainers || []), ...(podSpec.containers || [])];
}

function checkPodTemplate(doc, template, problems, index) {
  const path = "spec.template";
  const spec = template.spec || {};
  checkLabels((template.metadata || {}).labels, `${path}.metadata.labels`, problems);
  const selector = (doc.spec.selector || {}).matchLabels;
  if (!selector || Object.keys(selector).length === 0) {
    problems.push("spec.selector.matchLabels: empty (it would select every pod)");
  } else if (!selects(selector, (template.metadata || {}).labels)) {
    problems.push("spec.selector: does not match the template's labels");
  }
  const volumes = new Set();
  for (const volume of spec.volumes || []) {
    if (volumes.has(volume.name)) problems.push(`${path}.spec.volumes: duplicate name '${volume.name}'`);
    volumes.add(volume.name);
    if (!DNS1123_LABEL.test(volume.name) || volume.name.length > 63) {
      problems.push(`${path}.spec.volumes: bad name '${volume.name}'`);
    }
    if (volume.configMap && !volume.configMap.optional && !index.has(`ConfigMap/${volume.configMap.name}`)) {
      problems.push(`${path}.spec.volumes.${volume.name}: ConfigMap '${volume.configMap.name}' is not rendered`);
    }
  }
  const claims = new Set((spec.resourceClaims || []).map((c) => c.name));
  for (const claim of spec.resourceClaims || []) {
    if (claim.resourceClaimTemplateName && !index.has(`ResourceClaimTemplate/${claim.resourceClaimTemplateName}`)) {
      problems.push(`${path}.spec.resourceClaims.${claim.name}: ResourceClaimTemplate '${claim.resourceClaimTemplateName}' is not rendered`);
    }
  }
  const sa = spec.serviceAccountName;
  if (sa && sa !== "default" && !index.has(`ServiceAccount/${sa}`)) {
    problems.push(`${path}.spec.serviceAccountName: ServiceAccount '${sa}' is not rendered`);
  }
  const containerNames = new Set();
  const portNames = new Set();
  for (const c of allContainers(spec)) {
    const cpath = `${path}.spec.containers[${c.name}]`;
    if (containerNames.has(c.name)) problems.push(`${cpath}: duplicate container name`);
    containerNames.add(c.name);
    if (!DNS1123_LABEL.test(c.name) || c.name.length > 63) problems.push(`${cpath}: bad container name`);
    for (const port of c.ports || []) {
      if (port.name === undefined) continue;
      if (port.name.length > 15 || !IANA_SVC_NAME.test(port.name) || !/[a-z]/.test(port.name) || port.name.includes("--")) {
        problems.push(`${cpath}.ports: '${port.name}' is not a valid port name (at most 15 characters, a-z0-9-)`);
      }
      if (portNames.has(port.name)) problems.push(`${cpath}.ports: duplicate port name '${port.name}' in the pod`);
      portNames.add(port.name);
    }
    for (const mount of c.volumeMounts || []) {
      if (!volumes.has(mount.name)) problems.push(`${cpath}.volumeMounts: volume '${mount.name}' is not defined`);
    }
    for (const claim of (c.resources || {}).claims || []) {
      if (!claims.has(claim.name)) problems.push(`${cpath}.resources.claims: '${claim.name}' is not a resourceClaims entry of the pod`);
    }
    const env = new Set((c.env || []).map((e) => e.name));
    for (const arg of [...(c.command || []), ...(c.args || [])]) {
      for (const m of String(arg).replace(/\$\$/g, "").matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
        if (!env.has(m[1])) problems.push(`${cpath}: argument '${arg}' refers to $(${m[1]}), which is not in env`);
      }
    }
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      if (!p) continue;
      const handlers = ["exec", "httpGet", "tcpSocket", "grpc"].filter((h) => p[h] !== undefined);
      if (handlers.length !== 1) problems.push(`${cpath}.${probe}: needs exactly one handler, has ${handlers.length}`);
      for (const h of ["httpGet", "tcpSocket"]) {
        if (p[h] && typeof p[h].port === "string" && !(c.ports || []).some((x) => x.name === p[h].port)) {
          problems.push(`${cpath}.${probe}: port '${p[h].port}' is not a port of the container`);
        }
      }
    }
    if (c.restartPolicy !== undefined && !(spec.initContainers || []).includes(c)) {
      problems.push(`${cpath}: restartPolicy is only allowed on init containers (sidecars)`);
    }
  }
}

// Cross-object checks that need the whole render.
function checkReferences(doc, all, index, problems) {
  const templates = all.filter((d) => podTemplateOf(d) !== null && d.metadata.namespace === doc.metadata.namespace);
  const podLabelSets = templates.map((d) => ({ doc: d, labels: (podTemplateOf(d).metadata || {}).labels || {} }));
  if (doc.kind === "Service" && doc.spec && doc.spec.selector) {
    const matched = podLabelSets.filter((p) => selects(doc.spec.selector, p.labels));
    if (matched.length === 0) problems.push("spec.selector: selects no rendered pod template");
    const names = new Set();
    for (const port of doc.spec.ports || []) {
      if (port.name !== undefined) {
        if (names.has(port.name)) problems.push(`spec.ports: duplicate name '${port.name}'`);
        names.add(port.name);
      } else if ((doc.spec.ports || []).length > 1) {
        problems.push("spec.ports: every port needs a name when there are several");
      }
      if (typeof port.targetPort === "string") {
        const found = matched.some((p) =>
          allContainers(podTemplateOf(p.doc).spec).some((c) => (c.ports || []).some((x) => x.name === port.targetPort)));
        if (matched.length > 0 && !found) problems.push(`spec.ports.${port.name}: targetPort '${port.targetPort}' is no container port of the selected pods`);
      }
    }
  }
  if (doc.kind === "PodDisruptionBudget") {
    const sel = (doc.spec.selector || {}).matchLabels;
    if (!podLabelSets.some((p) => selects(sel, p.labels))) problems.push("spec.selector: selects no rendered pod template");
  }
  if (doc.kind === "StatefulSet") {
    const svc = all.find((d) => d.kind === "Service" && d.metadata.name === doc.spec.serviceName);
    if (!svc) problems.push(`spec.serviceName: Service '${doc.spec.serviceName}' is not rendered`);
    else if (svc.spec.clusterIP !== "None") problems.push(`spec.serviceName: Service '${doc.spec.serviceName}' is not headless`);
    if (doc.metadata.name.length > 52) {
      problems.push("metadata.name: longer than 52 characters (the pods' controller-revision-hash label would exceed 63)");
    }
  }
  if (doc.kind === "ServiceMonitor") {
    const sel = ((doc.spec || {}).selector || {}).matchLabels;
    const services = all.filter((d) => d.kind === "Service" && selects(sel, (d.metadata || {}).labels));
    if (services.length === 0) problems.push("spec.selector: selects no rendered Service");
    for (const endpoint of doc.spec.endpoints || []) {
      if (endpoint.port && !services.some((s) => (s.spec.ports || []).some((p) => p.name === endpoint.port))) {
        problems.push(`spec.endpoints: port '${endpoint.port}' is on no selected Service`);
      }
    }
  }
}

function checkNames(doc, problems) {
  const name = (doc.metadata || {}).name;
  if (!name) { problems.push("metadata.name: missing"); return; }
  if (name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) problems.push(`metadata.name: '${name}' is not a DNS subdomain`);
  if (doc.kind === "Service" && (name.length > 63 || !DNS1035_LABEL.test(name))) {
    problems.push(`metadata.name: '${name}' is not a DNS-1035 label (a Service name)`);
  }
  checkLabels(doc.metadata.labels, "metadata.labels", problems);
}

// ---------------------------------------------------------------------------

async function validateDocument(doc) {
  const problems = [];
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return ["not a mapping"];
  if (!doc.apiVersion || !doc.kind) return ["apiVersion and kind are required"];
  const file = modelDeclarationFile(doc.apiVersion, doc.kind);
  let Model;
  try {
    Model = (await import(modelSpecifier(doc.apiVersion, doc.kind)))[doc.kind];
  } catch (e) {
    return [`unknown kind: no schema for ${doc.apiVersion} ${doc.kind}`];
  }
  if (typeof Model !== "function" || !existsSync(file)) return [`unknown kind: no schema for ${doc.apiVersion} ${doc.kind}`];
  try {
    new Model(doc).validate();
  } catch (e) {
    for (const line of String(e.message).split(/,\s*(?=data)/)) problems.push(`schema: ${line}`);
  }
  checkFields(doc, { k: "ref", name: `I${doc.kind}` }, file, "", problems);
  return problems;
}

// Validates the documents of `files` as one render; prints each problem.
// Returns { count: problems found, docs: the parsed documents }.
async function validateRender(files) {
  const entries = [];
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    parseAllDocuments(text).forEach((parsed, i) => {
      const where = `${file} #${i + 1}`;
      if (parsed.errors.length > 0) {
        entries.push({ where, doc: null, yamlErrors: parsed.errors.map((e) => e.message) });
        return;
      }
      const doc = parsed.toJS();
      if (doc !== null) entries.push({ where, doc, yamlErrors: [] });
    });
  }
  const docs = entries.filter((e) => e.doc !== null).map((e) => e.doc);
  for (const doc of docs) {
    if (doc && doc.metadata && doc.metadata.namespace === undefined) doc.metadata.namespace = null;
  }
  const index = new Set(docs.filter((d) => d && d.metadata).map((d) => `${d.kind}/${d.metadata.name}`));
  let count = 0;
  const seen = new Set();
  for (const entry of entries) {
    const { doc } = entry;
    let problems = entry.yamlErrors.map((m) => `YAML: ${m}`);
    let label = "?";
    if (doc !== null) {
      label = `${doc.kind}/${(doc.metadata || {}).name}`;
      problems = problems.concat(await validateDocument(doc));
      if (problems.length === 0 || !problems[0].startsWith("unknown kind")) {
        checkNames(doc, problems);
        const key = `${doc.apiVersion} ${label}`;
        if (seen.has(key)) problems.push("rendered twice");
        seen.add(key);
        const template = podTemplateOf(doc);
        if (template) checkPodTemplate(doc, template, problems, index);
        checkReferences(doc, docs, index, problems);
      }
    }
    for (const p of problems) console.log(`${entry.where} ${label}: ${p}`);
    count += problems.length;
  }
  for (const doc of docs) if (doc.metadata && doc.metadata.namespace === null) delete doc.metadata.namespace;
  return { count, docs };
}

async function main(argv) {
  let dumpJson = null;
  let each = false;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--dump-json") dumpJson = argv[++i];
    else if (argv[i] === "--each") each = true;
    else files.push(argv[i]);
  }
  if (files.length === 0 || dumpJson === undefined || (each && dumpJson)) {
    console.error("usage: node validate_manifests.mjs [--dump-json OUT.json] RENDERED.yaml...\n" +
                  "       node validate_manifests.mjs --each RENDERED.yaml...  (each file a render of its own)");
    return 2;
  }
  for (const file of files) {
    if (!existsSync(file)) { console.error(`${file}: no such file`); return 2; }
  }
  const renders = each ? files.map((f) => [f]) : [files];
  let count = 0;
  const docs = [];
  for (const render of renders) {
    const result = await validateRender(render);
    count += result.count;
    docs.push(...result.docs);
  }
  if (dumpJson) writeFileSync(dumpJson, JSON.stringify(docs, null, 1));
  if (count > 0) {
    console.log(`${count} problem(s) in ${docs.length} documents`);
    return 1;
  }
  const kinds = docs.map((d) => d.kind).sort().join(", ");
  console.log(`${docs.length} documents valid (${kinds})`);
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
