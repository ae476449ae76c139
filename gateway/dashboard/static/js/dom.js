// Tiny DOM helpers. Every string from the API is rendered as text (textContent or a Text node),
// never parsed as markup: there is no innerHTML anywhere in the dashboard.

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Append children to a node: strings and numbers become Text nodes, null/undefined/false are
 * skipped, arrays are flattened.
 * @param {Node} parent
 * @param {Array<*>} children
 */
function appendChildren(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * Set element properties/attributes from a literal written in code (never from API data).
 * `class`, `dataset`, `style` (object), `on<event>` handlers and plain attributes are supported.
 */
function applyProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) {
      if (typeof value !== 'function') throw new TypeError(`${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.setAttribute('class', value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'style') {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
    } else if (key === 'text') {
      el.textContent = String(value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

/**
 * Create an HTML element: `h('button', {class: 'btn', onclick}, 'Label')`.
 * @returns {HTMLElement}
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  applyProps(el, props);
  appendChildren(el, children);
  return el;
}

/**
 * Create an SVG element with attributes.
 * @returns {SVGElement}
 */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyProps(el, props);
  appendChildren(el, children);
  return el;
}

/** Replace every child of `el` with `children` (rendered as text when they are strings). */
export function fill(el, ...children) {
  el.replaceChildren();
  appendChildren(el, children);
  return el;
}

/** Shorthand for `document.getElementById`, failing loudly when the page lacks the element. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing element #${id}`);
  return el;
}

/** Show or hide an element (the `hidden` attribute). */
export function show(el, visible = true) {
  el.hidden = !visible;
  return el;
}
