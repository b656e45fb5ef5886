// RFC 6902 JSON Patch, applied in the browser only to preview what the server will do.
// The server applies the patch itself and is the judge: a patch this preview accepts but
// the server refuses still shows the server's 422 message.

function unescape(token) {
  return token.replace(/~1/g, '/').replace(/~0/g, '~');
}

function tokens(pointer) {
  if (pointer === '') return [];
  if (typeof pointer !== 'string' || !pointer.startsWith('/')) {
    throw new Error(`path ${JSON.stringify(pointer)} must be empty or start with "/"`);
  }
  return pointer.slice(1).split('/').map(unescape);
}

function index(array, token, forAdd) {
  if (forAdd && token === '-') return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new Error(`"${token}" is not an array index`);
  const i = Number(token);
  if (i > array.length || (!forAdd && i === array.length)) {
    throw new Error(`index ${i} is out of bounds (length ${array.length})`);
  }
  return i;
}

function parentOf(doc, pointer) {
  const parts = tokens(pointer);
  if (parts.length === 0) return { parent: null, key: null };
  let node = doc;
  for (const part of parts.slice(0, -1)) {
    if (Array.isArray(node)) node = node[index(node, part, false)];
    else if (node !== null && typeof node === 'object' && Object.hasOwn(node, part)) node = node[part];
    else throw new Error(`path ${pointer} does not exist`);
  }
  if (node === null || typeof node !== 'object') throw new Error(`path ${pointer} does not exist`);
  return { parent: node, key: parts[parts.length - 1] };
}

function get(doc, pointer) {
  let node = doc;
  for (const part of tokens(pointer)) {
    if (Array.isArray(node)) node = node[index(node, part, false)];
    else if (node !== null && typeof node === 'object' && Object.hasOwn(node, part)) node = node[part];
    else throw new Error(`path ${pointer} does not exist`);
  }
  return node;
}

function equal(a, b) {
  return JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));
}

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]));
  }
  return value;
}

function add(doc, pointer, value) {
  const { parent, key } = parentOf(doc, pointer);
  if (parent === null) return value;
  if (Array.isArray(parent)) parent.splice(index(parent, key, true), 0, value);
  else parent[key] = value;
  return doc;
}

function remove(doc, pointer) {
  const { parent, key } = parentOf(doc, pointer);
  if (parent === null) throw new Error('cannot remove the whole document');
  if (Array.isArray(parent)) parent.splice(index(parent, key, false), 1);
  else if (Object.hasOwn(parent, key)) delete parent[key];
  else throw new Error(`path ${pointer} does not exist`);
  return doc;
}

/** Applies `patch` to a copy of `doc`; throws an Error saying which operation failed. */
export function applyPatch(doc, patch) {
  if (!Array.isArray(patch)) throw new Error('a JSON Patch is an array of operations');
  let out = structuredClone(doc);
  patch.forEach((op, i) => {
    try {
      if (!op || typeof op !== 'object') throw new Error('not an object');
      const clone = (v) => structuredClone(v);
      switch (op.op) {
        case 'add': out = add(out, op.path, clone(op.value)); break;
        case 'remove': out = remove(out, op.path); break;
        case 'replace': {
          get(out, op.path);
          if (op.path === '') { out = clone(op.value); break; }
          const { parent, key } = parentOf(out, op.path);
          if (Array.isArray(parent)) parent[index(parent, key, false)] = clone(op.value);
          else parent[key] = clone(op.value);
          break;
        }
        case 'move': {
          const value = get(out, op.from);
          out = add(remove(out, op.from), op.path, value);
          break;
        }
        case 'copy': out = add(out, op.path, clone(get(out, op.from))); break;
        case 'test':
          if (!equal(get(out, op.path), op.value)) throw new Error(`test failed at ${op.path}`);
          break;
        default: throw new Error(`unknown op ${JSON.stringify(op.op)}`);
      }
    } catch (err) {
      throw new Error(`operation ${i} (${op && op.op}): ${err.message}`);
    }
  });
  return out;
}
