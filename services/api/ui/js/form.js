// A form generated from a kind's JSON schema (GET /v1/kinds -> spec_schema), so a new kind or field needs
// no front-end change. Only what the user fills in is sent (the server applies its defaults); the browser
// does not validate: the server's 422 names each field, and its message is shown next to that field.

import { h } from "./dom.js";

function resolve(root, node) {
  let out = node || {};
  for (let guard = 0; out.$ref && guard < 20; guard += 1) {
    const name = out.$ref.split("/").pop();
    const { $ref, ...rest } = out;
    out = { ...(root.$defs || {})[name], ...rest };
  }
  return out;
}

/** {inner, nullable} for anyOf [X, null]. */
function unwrapNullable(root, node) {
  const alts = node.anyOf;
  if (!alts) return { inner: node, nullable: false };
  const others = alts.filter((a) => a.type !== "null");
  if (others.length === 1 && others.length < alts.length) {
    const { anyOf, ...rest } = node;
    return { inner: { ...resolve(root, others[0]), ...rest }, nullable: true };
  }
  return { inner: node, nullable: false };
}

function label(name, node) {
  return node.title || name;
}

function describe(node) {
  const parts = [];
  if (node.description) parts.push(node.description);
  const bounds = [];
  if (node.minimum !== undefined) bounds.push(`≥ ${node.minimum}`);
  if (node.exclusiveMinimum !== undefined) bounds.push(`> ${node.exclusiveMinimum}`);
  if (node.maximum !== undefined) bounds.push(`≤ ${node.maximum}`);
  if (node.exclusiveMaximum !== undefined) bounds.push(`< ${node.exclusiveMaximum}`);
  if (bounds.length) parts.push(bounds.join(", "));
  return parts.join(" · ");
}

function defaultText(node) {
  if (node.default === undefined) return "";
  return typeof node.default === "object" ? JSON.stringify(node.default) : String(node.default);
}

function parseScalar(text, type) {
  const t = text.trim();
  if (t === "") return undefined;
  if ((type === "integer" || type === "number") && /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) {
    return Number(t);
  }
  return t; // anything else goes as typed: the server says what is wrong with it
}

function parseJson(text) {
  const t = text.trim();
  if (t === "") return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return t;
  }
}

class Form {
  constructor(schema, skip) {
    this.schema = schema;
    this.skip = new Set(skip);
    this.slots = new Map(); // dotted path -> error element
  }

  errorSlot(path) {
    const slot = h("span.field-error", { "data-error-for": path, role: "alert" });
    this.slots.set(path, slot);
    return slot;
  }

  /** Fields of an object node -> {element, collect()}. */
  object(node, prefix, { top = false } = {}) {
    const required = new Set(node.required || []);
    const entries = Object.entries(node.properties || {}).filter(([name]) => !(top && this.skip.has(name)));
    entries.sort((a, b) => Number(required.has(b[0])) - Number(required.has(a[0])));
    const fields = entries
      .filter(([, child]) => child.const === undefined)
      .map(([name, child]) => [name, this.field(name, child, prefix ? `${prefix}.${name}` : name, required.has(name))]);
    const element = h("div.fields", {}, fields.map(([, f]) => f.element));
    const collect = () => {
      const out = {};
      for (const [name, f] of fields) {
        const value = f.collect();
        if (value !== undefined) out[name] = value;
      }
      return out;
    };
    return { element, collect };
  }

  field(name, raw, path, required) {
    const root = this.schema;
    const { inner, nullable } = unwrapNullable(root, resolve(root, raw));
    const node = resolve(root, inner);
    const title = label(name, node);
    const help = describe(node);
    const req = required ? h("span.req", { title: "required" }, "*") : null;
    const row = (control, collect, wide = false) => ({
      element: h(
        `div.field${wide ? ".wide" : ""}`,
        {},
        h("label", { for: `f-${path}` }, title, req),
        control,
        help ? h("small.help", {}, help) : null,
        this.errorSlot(path),
      ),
      collect,
    });

    if (node.oneOf && node.discriminator) return this.union(name, node, path, required, title, req, help);

    if (node.enum) {
      const select = h(
        "select",
        { id: `f-${path}`, name: path },
        required ? null : h("option", { value: "" }, `(default${node.default !== undefined ? `: ${defaultText(node)}` : ""})`),
        node.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))),
      );
      return row(select, () => (select.value === "" ? undefined : JSON.parse(select.value)));
    }
    if (node.type === "boolean") {
      const select = h(
        "select",
        { id: `f-${path}`, name: path },
        h("option", { value: "" }, `(default${node.default !== undefined ? `: ${node.default}` : ""})`),
        h("option", { value: "true" }, "true"),
        h("option", { value: "false" }, "false"),
      );
      return row(select, () => (select.value === "" ? undefined : select.value === "true"));
    }
    if (node.type === "integer" || node.type === "number" || node.type === "string") {
      const input = h("input", {
        id: `f-${path}`,
        name: path,
        type: "text",
        inputmode: node.type === "string" ? null : "decimal",
        placeholder: nullable && node.default === null ? "(none)" : defaultText(node),
        autocomplete: "off",
        spellcheck: "false",
      });
      return row(input, () => parseScalar(input.value, node.type));
    }
    if (node.type === "array" && node.items) {
      const items = resolve(root, node.items);
      if (items.enum) {
        const boxes = items.enum.map((v) =>
          h("label.check", {}, h("input", { type: "checkbox", name: path, value: JSON.stringify(v) }), String(v)),
        );
        const box = h("div.checks", { id: `f-${path}` }, boxes);
        return row(box, () => {
          const picked = boxes.map((b) => b.firstChild).filter((c) => c.checked).map((c) => JSON.parse(c.value));
          return picked.length ? picked : undefined;
        });
      }
    }
    if ((node.type === "object" || node.properties) && node.properties) {
      const sub = this.object(node, path);
      const details = h(
        "details.group",
        { open: required },
        h("summary", {}, title, req, help ? h("small.help", {}, ` — ${help}`) : null),
        sub.element,
        this.errorSlot(path),
      );
      return {
        element: details,
        collect: () => {
          const value = sub.collect();
          return Object.keys(value).length || required ? value : undefined;
        },
      };
    }
    // Anything else (free-form objects, lists of objects, unions without a tag): JSON text.
    const area = h("textarea", {
      id: `f-${path}`,
      name: path,
      rows: 2,
      placeholder: `JSON${node.default !== undefined ? ` (default ${defaultText(node)})` : ""}`,
      spellcheck: "false",
    });
    return row(area, () => parseJson(area.value), true);
  }

  union(name, node, path, required, title, req, help) {
    const root = this.schema;
    const tag = node.discriminator.propertyName;
    const variants = Object.entries(node.discriminator.mapping || {}).map(([value, ref]) => [value, resolve(root, { $ref: ref })]);
    const select = h(
      "select",
      { id: `f-${path}`, name: `${path}.${tag}` },
      required ? null : h("option", { value: "" }, "(default)"),
      variants.map(([value, v]) => h("option", { value, title: v.description || "" }, value)),
    );
    const holder = h("div.variant");
    let current = null;
    const show = () => {
      const picked = variants.find(([value]) => value === select.value);
      if (!picked) {
        current = null;
        holder.replaceChildren();
        return;
      }
      const variant = picked[1];
      const props = { ...variant.properties };
      delete props[tag];
      current = this.object({ ...variant, properties: props }, path);
      holder.replaceChildren(variant.description ? h("small.help", {}, variant.description) : "", current.element);
    };
    select.addEventListener("change", show);
    show();
    const element = h(
      "fieldset.union",
      {},
      h("legend", {}, title, req, ` (${tag})`),
      help ? h("small.help", {}, help) : null,
      select,
      this.errorSlot(`${path}.${tag}`),
      this.errorSlot(path),
      holder,
    );
    return {
      element,
      collect: () => (select.value === "" ? undefined : { [tag]: select.value, ...(current ? current.collect() : {}) }),
    };
  }
}

/** Build a form for `schema` -> {element, collect(), showErrors(errors) -> unplaced[], clearErrors()}. */
export function schemaForm(schema, { skip = ["kind"] } = {}) {
  const form = new Form(schema, skip);
  const body = form.object(schema, "", { top: true });
  return {
    element: body.element,
    collect: body.collect,
    clearErrors() {
      for (const slot of form.slots.values()) {
        slot.textContent = "";
        slot.closest(".field, fieldset, details")?.classList.remove("invalid");
      }
    },
    /** Put each error next to its field (or the nearest enclosing one); return those with no place. */
    showErrors(errors) {
      const unplaced = [];
      for (const err of errors) {
        let path = String(err.field || "");
        let slot = form.slots.get(path);
        while (!slot && path.includes(".")) {
          path = path.slice(0, path.lastIndexOf("."));
          slot = form.slots.get(path);
        }
        if (!slot) {
          unplaced.push(err);
          continue;
        }
        const prefix = path === err.field ? "" : `${err.field}: `;
        slot.textContent = slot.textContent ? `${slot.textContent}; ${prefix}${err.message}` : `${prefix}${err.message}`;
        slot.closest(".field, fieldset, details")?.classList.add("invalid");
        const details = slot.closest("details");
        if (details) details.open = true;
      }
      return unplaced;
    },
  };
}
